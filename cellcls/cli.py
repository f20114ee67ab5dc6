"""The ``cellcls`` command line: subcommands are plugins.

Every subcommand, the core's own included, is a :class:`Command` object published in the
``cellcls.commands`` entry-point group (see ``pyproject.toml``). ``cellcls`` imports only
those small command modules, never a stage's heavy code, so ``cellcls --help`` stays fast
and the core never depends on ``segment``, ``train`` or ``infer``. A command module must
keep its top-level imports light (argparse, cellcls.cli) and import numpy/torch inside
``run``. A command module that fails to import still appears in ``cellcls --help``, marked
BROKEN; running it prints the import error and exits 1.

A stage that wants ``python -m <stage>`` calls :func:`run_command` (one command) or
:func:`stage_main` (all of its commands) from its ``__main__``.

Exit codes, the same for every command
--------------------------------------
0
    Done.
1
    The command stopped on bad input and printed ONE line ``error: ...`` on stderr, without a
    traceback (``-v`` adds it). Bad input is: a :class:`~cellcls.errors.CellclsError` raised
    by the library (a bad file, ID, row or option value; values out of range raise its
    subclass :class:`~cellcls.errors.ParameterError`, which is also a ``ValueError``); an
    ``OSError`` (a file or folder that cannot be read or written); an option value that parses
    but lies outside its :class:`Bounded` range; a command whose module cannot be imported.
2
    Usage: argparse cannot parse the command line (unknown option, missing required option,
    a value that is not a number or not one of the choices). The usage and argparse's message
    are printed. ``cellcls`` without a command prints the help and returns 2.
130
    Interrupted (Ctrl-C).

A command may add codes of its own (``cellcls segment``: 3 = finished, some images failed).
Any other exception (a plain ``ValueError``, ``TypeError``, ``KeyError``...) is a bug, not bad
input: it is not caught, and its traceback is the bug report.

Conventions for command authors
-------------------------------
* One flag name per idea across all commands: ``--out``, ``--json`` (also write JSON),
  ``--iou-threshold``, ``--num-workers`` (decoding workers), ``--no-progress``, ``--seed``.
* Ranges: ``type=Bounded(int, low=1)`` instead of a converter raising
  ``ArgumentTypeError``, so an out-of-range value is exit 1 with one line naming the option.
* Long loops draw tqdm bars; :func:`add_progress_option` adds ``--no-progress`` and
  :func:`progress_enabled` says whether to draw (not with ``--no-progress`` or ``-q``).
* A renamed option keeps its old spelling through :func:`add_deprecated_alias`: hidden from
  ``--help``, still working, and logging a deprecation warning that names the release that
  removes it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import textwrap
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Sequence

# Everything runs offline, with or without the Makefile's exports: importing albumentations would
# otherwise ask pypi.org for a newer version, and timm's hub client would try the Hugging Face hub.
# Set before any command imports them (every command runs through this module); a user's own value wins.
for _name in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_OFFLINE"):
    os.environ.setdefault(_name, "1")

__all__ = [
    "Command",
    "Bounded",
    "ENTRY_POINT_GROUP",
    "discover_commands",
    "build_parser",
    "main",
    "run_command",
    "stage_main",
    "add_progress_option",
    "progress_enabled",
    "add_deprecated_alias",
]

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


# --------------------------------------------------------------------------- option helpers
@dataclass(frozen=True)
class Bounded:
    """``type=`` of a numeric option with a range, checked after parsing.

    argparse only converts the text (``"abc"`` stays a usage error, exit 2); the range is
    checked before the command runs, so ``--k 1`` is one line ``error: --k must be an integer
    >= 2, got 1`` and exit 1. Floats must also be finite. ``words`` are texts taken as they are
    instead of a number (``words=("auto",)`` for ``--image-scale auto|F``).

    Examples
    --------
    >>> parser.add_argument("--k", type=Bounded(int, low=2), default=5)  # doctest: +SKIP
    >>> parser.add_argument("--iou-threshold", type=Bounded(float, low=0, high=1, low_inclusive=False))  # doctest: +SKIP
    >>> parser.add_argument("--image-scale", type=Bounded(float, low=0, low_inclusive=False, words=("auto",)))  # doctest: +SKIP
    """

    kind: type = int
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    words: tuple[str, ...] = ()

    @property
    def __name__(self) -> str:  # argparse names the type in "invalid int value: 'abc'"
        return self.kind.__name__

    def __call__(self, text: str) -> Any:
        return text if text in self.words else self.kind(text)

    def describe(self) -> str:
        """What is allowed, e.g. ``"an integer >= 2"`` or ``"a number in (0, 1]"``."""
        words = "".join(f"{w!r} or " for w in self.words)
        return words + self._describe_number()

    def _describe_number(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        low, high = self.low, self.high
        if low is not None and high is not None:
            if self.kind is int and self.low_inclusive and self.high_inclusive:
                return f"{what} in {low:g}..{high:g}"
            return f"{what} in {'[' if self.low_inclusive else '('}{low:g}, {high:g}{']' if self.high_inclusive else ')'}"
        if low is not None:
            return f"{what} {'>=' if self.low_inclusive else '>'} {low:g}"
        if high is not None:
            return f"{what} {'<=' if self.high_inclusive else '<'} {high:g}"
        return what

    def allows(self, value: float) -> bool:
        """True if ``value`` is one of ``words`` or lies in the range (and is finite)."""
        if isinstance(value, str):
            return value in self.words
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and not (value >= self.low if self.low_inclusive else value > self.low):
            return False
        if self.high is not None and not (value <= self.high if self.high_inclusive else value < self.high):
            return False
        return True


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-progress`` (the same flag on every command with a long loop)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (-q also turns them off)")


def progress_enabled(args: argparse.Namespace) -> bool:
    """Whether a command should draw progress bars: not with ``--no-progress`` nor ``-q``."""
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False))


class _DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and notes a deprecation."""

    def __init__(self, option_strings, dest, *, replacement: str, since: str, removed_in: str, **kwargs) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.replacement, self.since, self.removed_in = replacement, since, removed_in

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        note = (f"{option_string} is deprecated since cellcls {self.since} and will be removed in "
                f"{self.removed_in}; use {self.replacement}")
        setattr(namespace, "_deprecated", [*getattr(namespace, "_deprecated", ()), note])
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser, old: str, new: argparse.Action, *, since: str, removed_in: str
) -> argparse.Action:
    """Keep the old spelling ``old`` of the option ``new`` (the action ``add_argument`` returned).

    The alias takes the same values, writes the same ``dest``, is hidden from ``--help``, and
    using it logs ``"--iou is deprecated since cellcls 0.1.0 and will be removed in 0.3; use
    --iou-threshold"`` once the command starts. Do not alias a required option (argparse would
    still ask for the new spelling).
    """
    return parser.add_argument(
        old, action=_DeprecatedAlias, dest=new.dest, nargs=new.nargs, const=new.const, type=new.type,
        choices=new.choices, metavar=new.metavar, replacement=_option_name(new), since=since,
        removed_in=removed_in,
    )


def _option_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else (action.metavar or action.dest)


def _range_checks(parser: argparse.ArgumentParser) -> tuple[tuple[str, str, Bounded], ...]:
    # argparse keeps every action (groups included) in the parser's _actions list; it has no public accessor.
    return tuple((_option_name(a), a.dest, a.type) for a in parser._actions
                 if isinstance(a.type, Bounded) and not isinstance(a, _DeprecatedAlias))


def _check_ranges(args: argparse.Namespace) -> None:
    from .errors import ParameterError

    for option, dest, bounded in getattr(args, "_checks", ()):
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not bounded.allows(item):
                raise ParameterError(f"{option} must be {bounded.describe()}, got {item!r}")


# --------------------------------------------------------------------------- discovery
def _broken_command(name: str, target: str, reason: str, cause: BaseException | None) -> Command:
    """A stand-in for a command that cannot be loaded: listed as BROKEN, running it explains why."""
    module = target.split(":", 1)[0]
    message = f"command {name!r} cannot be loaded from {target} (module {module}): {reason}"

    def run(args: argparse.Namespace) -> int:
        from .errors import PluginError

        hint = "" if args.verbose else " (add -v for the traceback)"
        raise PluginError(message + hint) from cause

    return Command(
        name=name,
        help=f"BROKEN: {reason}; run 'cellcls {name}' for details",
        description=f"This command is installed but broken: {message}.",
        example=f"cellcls {name} -v    # prints the import error with its traceback",
        add_arguments=lambda parser: parser.set_defaults(_broken=True),
        run=run,
    )


def discover_commands(*, package: str | None = None) -> dict[str, Command]:
    """Load every :class:`Command` registered in the ``cellcls.commands`` entry-point group.

    ``package`` keeps only the commands whose object lives in that top-level package
    (``"train"`` gives the training stage's commands). An entry point that cannot be loaded,
    or is not a :class:`Command`, becomes a BROKEN stand-in under its entry-point name:
    ``--help`` lists it as broken and running it prints the reason and exits 1.
    """
    found: dict[str, Command] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if package is not None and ep.value.split(".", 1)[0].split(":", 1)[0] != package:
            continue
        try:
            cmd = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            log.debug("cellcls command %r (%s) cannot be loaded", ep.name, ep.value, exc_info=True)
            found[ep.name] = _broken_command(ep.name, ep.value, f"{type(exc).__name__}: {exc}", exc)
            continue
        if not isinstance(cmd, Command):
            found[ep.name] = _broken_command(
                ep.name, ep.value, f"the entry point gives a {type(cmd).__name__}, not a cellcls.cli.Command", None
            )
            continue
        found[cmd.name] = cmd
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- parsers
def _add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log output (-vv for debug); an error also prints its traceback")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _configure_command_parser(parser: argparse.ArgumentParser, cmd: Command) -> None:
    cmd.add_arguments(parser)
    _add_common_options(parser)
    parser.set_defaults(_command=cmd, _checks=_range_checks(parser))


def _epilog(cmd: Command) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(cmd.example).strip(), "  ")


def build_parser(
    commands: dict[str, Command] | None = None,
    *,
    prog: str = "cellcls",
    description: str = "Label every cell of Human Protein Atlas images. The commands below are the ones "
    "installed (each stage registers its own).",
) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per discovered command."""
    commands = discover_commands() if commands is None else commands
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Run '{prog} COMMAND --help' for a command's options and an example. "
        "Exit codes: 0 done, 1 error (one 'error:' line), 2 usage.",
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


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, except that a BROKEN command accepts any arguments (it only explains itself)."""
    args, extras = parser.parse_known_args(argv)
    if extras and not getattr(args, "_broken", False):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


# --------------------------------------------------------------------------- running
def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _report(exc: BaseException, *, verbose: int) -> None:
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr)


def _execute(args: argparse.Namespace) -> int:
    from .errors import CellclsError

    _setup_logging(args)
    for note in getattr(args, "_deprecated", ()):
        log.warning(note)
    try:
        _check_ranges(args)
        code = args._command.run(args)
    except (CellclsError, OSError) as exc:  # bad input; anything else is a bug and keeps its traceback
        _report(exc, verbose=args.verbose)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellcls`` console script."""
    parser = build_parser()
    args = _parse(parser, argv)
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
    return _execute(_parse(parser, argv))


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
    args = _parse(parser, argv)
    if not hasattr(args, "_command"):
        parser.print_help()
        return 2
    return _execute(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
