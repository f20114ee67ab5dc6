"""The plugin CLI: discovery, help texts, error handling, and the core's independence from the stages."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from cellcls import cli
from cellcls.errors import CellclsError

EXPECTED = {"folds", "stats", "dedup", "synth", "check-submission", "evaluate", "segment", "segment-score", "prior-submission"}


def _fake(name: str, run) -> cli.Command:
    return cli.Command(
        name=name,
        help=f"{name} help",
        description=f"{name} description",
        example=f"cellcls {name} --x 1",
        add_arguments=lambda p: p.add_argument("--x", type=int, default=0),
        run=run,
    )


def test_every_installed_command_is_discovered():
    assert EXPECTED <= set(cli.discover_commands())


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_subcommand_help_has_an_example(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"{name}" in out.split("example:")[1]


def test_no_command_prints_help_and_returns_2(capsys):
    assert cli.main([]) == 2
    assert "commands" in capsys.readouterr().out


def test_cellcls_error_becomes_a_message_and_exit_1(capsys):
    def boom(args: argparse.Namespace) -> int:
        raise CellclsError("image 'abc' has no blue channel file")

    parser = cli.build_parser({"boom": _fake("boom", boom)})
    args = parser.parse_args(["boom"])
    assert cli._execute(args) == 1
    err = capsys.readouterr().err
    assert "error: image 'abc' has no blue channel file" in err
    assert "Traceback" not in err


def test_run_returns_its_exit_code():
    parser = cli.build_parser({"echo": _fake("echo", lambda a: a.x)})
    assert cli._execute(parser.parse_args(["echo", "--x", "3"])) == 3


def test_broken_plugin_is_skipped_with_a_warning(monkeypatch, caplog):
    class EP:
        name, value = "broken", "nowhere.at_all:CMD"

        def load(self):
            raise ImportError("No module named 'nowhere'")

    monkeypatch.setattr(cli, "entry_points", lambda group: [EP()])
    assert cli.discover_commands() == {}
    assert "broken" in caplog.text


def test_listing_commands_imports_no_stage_and_no_torch():
    # The core must stay light and independent: `cellcls --help` loads only command modules.
    code = (
        "import sys; from cellcls import cli; cli.build_parser(); "
        "heavy = [m for m in ('torch', 'timm', 'segment.network', 'segment.pipeline', 'train.module') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_package_never_imports_a_stage():
    import pathlib
    import re

    root = pathlib.Path(cli.__file__).parent
    pattern = re.compile(r"^\s*(from|import)\s+(segment|train|infer)\b", re.M)
    offenders = [str(p) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_stage_without_commands_says_so():
    proc = subprocess.run([sys.executable, "-m", "train"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "'train' stage registers no commands" in proc.stderr


def test_python_m_stage_lists_only_its_own_commands():
    proc = subprocess.run([sys.executable, "-m", "infer", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "prior-submission" in proc.stdout and "synth" not in proc.stdout
