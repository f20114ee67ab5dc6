"""The plugin CLI: discovery, help texts, error handling, and the core's independence from the stages."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from cellcls import cli
from cellcls.errors import CellclsError

EXPECTED = {"folds", "stats", "dedup", "synth", "check-submission", "evaluate", "segment", "segment-score", "prior-submission",
            "cell-table", "train", "resize", "predict", "neighbors", "dedup-embeddings", "show", "export-masks", "report"}


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


@pytest.fixture
def broken_plugin(monkeypatch, tmp_path):
    """A real entry point whose module fails to import (a missing dependency), next to a working one."""
    from importlib.metadata import EntryPoint

    (tmp_path / "cellcls_broken_plugin.py").write_text("import cellcls_missing_dependency_xyz\nCMD = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("broken", "cellcls_broken_plugin:CMD", cli.ENTRY_POINT_GROUP),
           EntryPoint("folds", "cellcls.commands.data:FOLDS", cli.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(cli, "entry_points", lambda group: eps)
    return tmp_path / "cellcls_broken_plugin.py"


def test_broken_plugin_is_listed_as_broken_and_the_others_still_work(broken_plugin, capsys):
    assert set(cli.discover_commands()) == {"broken", "folds"}
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert "broken BROKEN: ModuleNotFoundError: No module named 'cellcls_missing_dependency_xyz'" in out
    assert "folds multi-label stratified" in out


def test_running_a_broken_plugin_prints_its_import_error_in_one_line(broken_plugin, capsys):
    assert cli.main(["broken", "--any", "options"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: command 'broken' cannot be loaded")
    assert "cellcls_broken_plugin" in err[0] and "ModuleNotFoundError" in err[0] and "-v" in err[0]


def test_running_a_broken_plugin_with_v_prints_the_traceback(broken_plugin, capsys):
    assert cli.main(["broken", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and str(broken_plugin) in err and "import cellcls_missing_dependency_xyz" in err
    assert err.strip().splitlines()[-1].startswith("error: command 'broken' cannot be loaded")


def test_entry_point_that_is_not_a_command_is_broken(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    eps = [EntryPoint("odd", "cellcls.cli:ENTRY_POINT_GROUP", cli.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(cli, "entry_points", lambda group: eps)
    assert cli.main(["odd"]) == 1
    assert "gives a str, not a cellcls.cli.Command" in capsys.readouterr().err


def test_unknown_options_of_a_working_command_are_still_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["folds", "--labels", "x.csv", "--out", "y.csv", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


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


def test_stage_without_commands_says_so(capsys):
    assert cli.stage_main("no_such_stage_xyz", []) == 2
    assert "'no_such_stage_xyz' stage registers no commands" in capsys.readouterr().err


def test_python_m_stage_lists_only_its_own_commands():
    proc = subprocess.run([sys.executable, "-m", "infer", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "prior-submission" in proc.stdout and "synth" not in proc.stdout


# --------------------------------------------------------------------------- errors, ranges, deprecations
def _fake_with(name: str, add_arguments, run=lambda args: 0) -> cli.Command:
    return cli.Command(name=name, help="h", description="d", example=f"cellcls {name}", add_arguments=add_arguments,
                       run=run)


def test_a_bug_is_not_caught_and_keeps_its_traceback():
    def bug(args):
        raise ValueError("a plain ValueError is a bug, not bad input")

    parser = cli.build_parser({"bug": _fake("bug", bug)})
    with pytest.raises(ValueError, match="a bug"):
        cli._execute(parser.parse_args(["bug"]))


def test_os_error_is_one_line_and_v_adds_the_traceback(capsys):
    def missing(args):
        open("/nonexistent-dir-cellcls/x.csv")

    parser = cli.build_parser({"io": _fake("io", missing)})
    assert cli._execute(parser.parse_args(["io"])) == 1
    err = capsys.readouterr().err
    assert err == "error: [Errno 2] No such file or directory: '/nonexistent-dir-cellcls/x.csv'\n"
    assert cli._execute(parser.parse_args(["io", "-v"])) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in missing" in err and err.splitlines()[-1].startswith("error: [Errno 2]")


@pytest.mark.parametrize("bounded, good, bad, text", [
    (cli.Bounded(int, low=2), [2, 100], [1, -3], "an integer >= 2"),
    (cli.Bounded(int, low=0, high=40), [0, 40], [-1, 41], "an integer in 0..40"),
    (cli.Bounded(float, low=0, high=1, low_inclusive=False), [1e-9, 1.0], [0.0, 1.01, float("nan"), float("inf")],
     "a number in (0, 1]"),
    (cli.Bounded(float, low=0, low_inclusive=False, words=("auto",)), ["auto", 0.25], [0.0, "other"],
     "'auto' or a number > 0"),
])
def test_bounded_ranges(bounded, good, bad, text):
    assert bounded.describe() == text
    assert all(bounded.allows(v) for v in good)
    assert not any(bounded.allows(v) for v in bad)


def test_out_of_range_value_is_exit_1_but_unparsable_value_is_usage_exit_2(capsys):
    ran = []
    cmd = _fake_with("k", lambda p: p.add_argument("--k", type=cli.Bounded(int, low=2), default=5),
                     run=lambda args: ran.append(args.k) or 0)
    parser = cli.build_parser({"k": cmd})
    assert cli._execute(parser.parse_args(["k", "--k", "1"])) == 1
    assert capsys.readouterr().err == "error: --k must be an integer >= 2, got 1\n" and ran == []
    assert cli._execute(parser.parse_args(["k", "--k", "3"])) == 0 and ran == [3]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["k", "--k", "abc"])
    assert exc.value.code == 2 and "invalid int value: 'abc'" in capsys.readouterr().err


def test_deprecated_alias_works_is_hidden_and_logs_when_it_will_go(capsys, caplog):
    def add(parser):
        new = parser.add_argument("--new-name", type=cli.Bounded(float, low=0), default=1.0)
        cli.add_deprecated_alias(parser, "--old", new, since="0.1.0", removed_in="0.3")

    seen = []
    parser = cli.build_parser({"c": _fake_with("c", add, run=lambda args: seen.append(args.new_name) or 0)})
    assert cli._execute(parser.parse_args(["c", "--old", "0.5"])) == 0 and seen == [0.5]
    assert "--old is deprecated since cellcls 0.1.0 and will be removed in 0.3; use --new-name" in caplog.text
    caplog.clear()
    assert cli._execute(parser.parse_args(["c", "--new-name", "2"])) == 0 and seen == [0.5, 2.0]
    assert "deprecated" not in caplog.text
    assert cli._execute(parser.parse_args(["c", "--old", "-1"])) == 1  # the alias's value is range-checked too
    assert "--new-name must be a number >= 0, got -1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["c", "--help"])
    out = capsys.readouterr().out
    assert "--new-name" in out and "--old" not in out


@pytest.mark.parametrize("argv, dest, value, old", [
    (["segment-score", "--masks", "m", "--truth", "t", "--iou", "0.5"], "iou_threshold", 0.5, "--iou"),
    (["stats", "--images", "i", "--out", "o", "--workers", "3"], "num_workers", 3, "--workers"),
    (["dedup", "--images", "i", "--out", "o", "--workers", "0"], "num_workers", 0, "--workers"),
])
def test_old_flag_spellings_still_parse_and_are_marked_deprecated(argv, dest, value, old):
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert [note.split()[0] for note in args._deprecated] == [old]
    assert "since cellcls 0.1.0" in args._deprecated[0] and "removed in 0.3" in args._deprecated[0]


LONG_COMMANDS = {"stats", "dedup", "synth", "segment", "segment-score", "prior-submission", "check-submission",
                 "evaluate", "cell-table", "train", "resize", "export-masks", "predict", "neighbors",
                 "dedup-embeddings"}
OTHER_SPELLINGS = {"--iou", "--workers", "--progress", "--no-progress-bar", "--no-tqdm", "--output", "--out-dir",
                   "--iou-thr", "--jobs", "--threads"}


@pytest.mark.parametrize("name", sorted(cli.discover_commands()))
def test_one_flag_name_per_idea(name, capsys):
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out))
    assert not flags & OTHER_SPELLINGS, flags
    if name in LONG_COMMANDS:
        assert "--no-progress" in flags


def test_no_progress_and_quiet_turn_bars_off():
    assert cli.progress_enabled(argparse.Namespace(no_progress=False, quiet=False))
    assert not cli.progress_enabled(argparse.Namespace(no_progress=True, quiet=False))
    assert not cli.progress_enabled(argparse.Namespace(no_progress=False, quiet=True))
