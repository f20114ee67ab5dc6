"""The ``cellcls`` command line: subcommands are plugins.

Every subcommand, the core's own included, is a :class:`Command` object published in the
``cellcls.commands`` entry-point group (see ``pyproject.toml``). ``cellcls`` imports only
those small command modules, never a stage's heavy code, so ``cellcls --help`` stays fast
and the core never depends on ``segment``, ``train`` or ``infer``. A command module must
keep its top-level imports light (argparse, cellcls.cli) and import numpy/torch inside
``run``.

A stage that wants ``python -m <stage>`` calls :func:`run_command` from its ``__main__``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Sequence

__all__ = ["Command", "ENTRY_POINT_GROUP", "discover_commands", "build_parser", "main", "run_command", "stage_main"]

ENTRY_POINT_GROUP = "cellcls.commands"
log = logging.getLogger("cellcls")


@dataclass(frozen=True)
class Command:
    """A subcommand.

    Attributes
    ----------
    name : str
        What the user types after ``cellcls``.
    help : str
        One line, shown in ``cellcls --help``.
    description : str
        A paragraph shown at the top of ``cellcls NAME --help``.
    example : str
        One or more example invocations, shown at the end of ``--help``.
    add_arguments : callable
        ``add_arguments(parser)`` declares the options.
    run : callable
        ``run(args) -> int`` does the work and returns the process exit code.
    """

    name: str
    help: str
    description: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def discover_commands(*, package: str | None = None) -> dict[str, Command]:
    """Load every :class:`Command` registered in the ``cellcls.commands`` entry-point group.

    ``package`` keeps only the commands whose object lives in that top-level package
    (``"train"`` gives the training stage's commands).
    """
    found: dict[str, Command] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if package is not None and ep.value.split(".", 1)[0].split(":", 1)[0] != package:
            continue
        try:
            cmd = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            log.warning("could not load cellcls command %r from %s: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(cmd, Command):
            log.warning("entry point %r (%s) is not a cellcls.cli.Command; ignored", ep.name, ep.value)
            continue
        found[cmd.name] = cmd
    return dict(sorted(found.items()))


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _configure_command_parser(parser: argparse.ArgumentParser, cmd: Command) -> None:
    cmd.add_arguments(parser)
    _add_common_options(parser)
    parser.set_defaults(_command=cmd)


def _epilog(cmd: Command) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(cmd.example).strip(), "  ")


def build_parser(
    commands: dict[str, Command] | None = None,
    *,
    prog: str = "cellcls",
    description: str = "Label every cell of Human Protein Atlas images: data tools, segmentation, "
    "training, inference and Kaggle submission.",
) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per discovered command."""
    commands = discover_commands() if commands is None else commands
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Run '{prog} COMMAND --help' for a command's options and an example.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for cmd in commands.values():
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description,
            epilog=_epilog(cmd),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _configure_command_parser(p, cmd)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _execute(args: argparse.Namespace) -> int:
    from .errors import CellclsError

    _setup_logging(args)
    try:
        code = args._command.run(args)
    except CellclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellcls`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_command"):
        parser.print_help()
        return 2
    return _execute(args)


def run_command(cmd: Command, argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run one command as its own program (``python -m segment`` and friends)."""
    parser = argparse.ArgumentParser(
        prog=prog or cmd.name,
        description=cmd.description,
        epilog=_epilog(cmd),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure_command_parser(parser, cmd)
    return _execute(parser.parse_args(argv))


def stage_main(package: str, argv: Sequence[str] | None = None) -> int:
    """``python -m <package>``: the commands a stage registered, under the stage's own name."""
    commands = discover_commands(package=package)
    if not commands:
        print(
            f"the '{package}' stage registers no commands in this installation; "
            f"run 'cellcls --help' for what is available",
            file=sys.stderr,
        )
        return 2
    parser = build_parser(commands, prog=f"python -m {package}", description=f"The {package} stage of cellcls.")
    args = parser.parse_args(argv)
    if not hasattr(args, "_command"):
        parser.print_help()
        return 2
    return _execute(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
