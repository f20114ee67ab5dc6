"""`make bench`'s recorder (benchmarks/run_all.py, _record.py, _tables.py): README section, failures, plots.

The scripts run here are tiny ones written into tmp_path (printing a table, failing, sleeping);
the table parser is also checked on output captured from the real quick benchmarks.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _record  # noqa: E402
import run_all  # noqa: E402
from _tables import number, parse_tables  # noqa: E402

from cellcls.errors import ParameterError  # noqa: E402
from cellcls.report.draw import PALETTE  # noqa: E402

# `python benchmarks/bench_rle.py --quick`, 2026-12-02, the 2-core VM (printed as is).
RLE_QUICK = """\
  labels  original cells  naive ms  run-space ms  speed-up / goal 50 ms
    512²     2048²    40     760.6           3.9    195.3x         0.08
   2048²     2048²    40     746.9           5.7    130.1x         0.11
"""

# The first lines of `python benchmarks/bench_crops.py --quick` (same day): a prose line above the table.
CROPS_QUICK = """\
40 cells, median box 382 x 312 original px, 15 on the border; cell table of the image 13.4 ms
bits           mode    S  crops ms  per cell decode ms  ratio   goal
   8        context  128      80.6      2.02     282.6  0.285   <0.5 ok
   8        context  256     128.4      3.21     336.4  0.381   <0.5 ok
  16         masked  128      99.9      2.50     528.6  0.189   <0.5 ok
  16 window_context  256      11.2      0.28     477.9  0.023   <0.5 ok
"""

# `python benchmarks/bench_evaluate.py --quick`: prose above and below the table, in one block.
EVALUATE_QUICK = """\
synthetic test set: 60 images x ~30 cells x 19 classes = 34200 triplets, 1800 cells, submission 8 MB (built in 16.2 s)
step                                seconds  ms/image  / goal
write submission (shuffled rows)        0.7      11.0        
check-submission                        0.2       3.6        
evaluate mAP@0.6                        0.7      11.1    0.10
(goal: evaluate in 6 s = 60 s x 60/559 images)
mAP of the noisy submission: 0.4696
"""

HAND = ("# Benchmarks\r\n\r\nHand-written, with a CRLF line above, a trailing space \n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\nÄ unicode line: 512² x 40 cells, no newline at the end")


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def _table_script(folder: Path, name: str = "bench_alpha") -> Path:
    """A bench script printing a markdown table whose value is its `--value` argument."""
    return _script(folder, name, """\
        import sys
        value = sys.argv[sys.argv.index("--value") + 1] if "--value" in sys.argv else "7"
        print("a note before the table")
        print("| size | items/s |")
        print("|---|---|")
        print(f"| 64 | {value} |")
        print(f"| 128 | {value}0 |")
        print("| args | " + " ".join(sys.argv[1:]) + " |")
    """)


def _run(tmp_path: Path, *args: str) -> int:
    return run_all.main(["--scripts", str(tmp_path / "scripts"), "--readme", str(tmp_path / "README.md"),
                         "--plots", str(tmp_path / "plots"), "--quiet", *args])


@pytest.fixture()
def scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    return folder


def _section(text: str) -> str:
    return text[text.index(_record.BEGIN):text.index(_record.END) + len(_record.END)]


@pytest.mark.parametrize("ending", ["", "  \n\n\n", "\r\n"])
def test_first_run_appends_section_and_keeps_hand_text_byte_identical(tmp_path, scripts, ending):
    _table_script(scripts)
    readme = tmp_path / "README.md"
    readme.write_bytes((HAND + ending).encode("utf-8"))
    assert _run(tmp_path) == 0
    new = readme.read_bytes()
    assert new.startswith((HAND + ending).encode("utf-8"))
    text = new.decode("utf-8")
    assert text.count(_record.BEGIN) == 1 and text.rstrip().endswith(_record.END)
    record = _record.read_records(text)["bench_alpha"]
    assert "- command: `python " in record and "bench_alpha.py`" in record
    assert "exit code 0 (ok)" in record and " UTC; wall time " in record
    assert " cores, " in record and "GPU: " in record and "torch " in record
    assert "| size | items/s |\n|---|---|\n| 64 | 7 |\n| 128 | 70 |" in record  # the table, verbatim
    assert "```text\na note before the table\n```" in record


def test_rerun_replaces_the_section_and_keeps_text_around_it(tmp_path, scripts):
    _table_script(scripts)
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nhand text above\n\n", "\n## A hand section after the markers\n\nkept.\n"
    readme.write_text(before + f"{_record.BEGIN}\nold generated text\n{_record.END}\n" + after, encoding="utf-8")
    assert _run(tmp_path, "--value", "1") == 0
    first = readme.read_text(encoding="utf-8")
    assert _run(tmp_path, "--value", "2") == 0
    second = readme.read_text(encoding="utf-8")
    for text in (first, second):
        assert text.startswith(before) and text.endswith(after)
        assert text.count(_record.BEGIN) == 1 and text.count(_record.END) == 1
        assert "old generated text" not in text
        assert list(_record.read_records(text)) == ["bench_alpha"]
    assert "| 64 | 1 |" in first and "| 64 | 2 |" in second and "| 64 | 1 |" not in second
    assert "--value 2" in second  # pass-through arguments reach the script and its recorded command


def test_only_keeps_the_other_records(tmp_path, scripts):
    _table_script(scripts, "bench_alpha")
    _table_script(scripts, "bench_beta")
    (tmp_path / "README.md").write_text("# B\n", encoding="utf-8")
    assert _run(tmp_path, "--value", "1") == 0
    old = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))
    assert _run(tmp_path, "--only", "alpha", "--value", "2") == 0
    new = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))
    assert list(new) == ["bench_alpha", "bench_beta"]
    assert new["bench_beta"] == old["bench_beta"]  # untouched, byte for byte
    assert "| 64 | 2 |" in new["bench_alpha"]
    assert _run(tmp_path, "--value", "3") == 0  # a full run rewrites every record
    full = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))
    assert all("| 64 | 3 |" in r for r in full.values())


def test_header_keeps_the_last_full_run_after_an_only_run(tmp_path, scripts):
    _table_script(scripts, "bench_alpha")
    _table_script(scripts, "bench_beta")
    readme = tmp_path / "README.md"
    readme.write_text("# B\n", encoding="utf-8")

    def header() -> list[str]:
        lines = _section(readme.read_text(encoding="utf-8")).splitlines()
        return [line for line in lines if line.startswith(("Last", "Since"))]

    assert _run(tmp_path, "--value", "1") == 0
    (full,) = header()
    assert full.startswith("Last full run: `python ") and "--value 1" in full and "--only" not in full
    assert _run(tmp_path, "--only", "alpha", "--value", "2") == 0
    kept, since = header()
    assert kept == full and since.startswith("Since then: `") and "--only alpha" in since
    assert _run(tmp_path, "--only", "beta") == 0  # a second partial run still names the same full run
    assert header()[0] == full and "--only beta" in header()[1]
    assert _run(tmp_path, "--value", "3") == 0
    (again,) = header()
    assert "--value 3" in again


def test_a_failing_script_is_recorded_and_the_others_still_run(tmp_path, scripts):
    _script(scripts, "bench_broken", """\
        import sys
        print("| partial | table |")
        print("|---|---|")
        print("half done", file=sys.stderr)
        raise SystemExit("boom: the fixture is missing")
    """)
    _table_script(scripts, "bench_zulu")
    assert _run(tmp_path) == 1
    records = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))
    assert "exit code 1 (**failed**)" in records["bench_broken"]
    assert "half done\nboom: the fixture is missing" in records["bench_broken"]  # stderr's tail
    assert "exit code 0 (ok)" in records["bench_zulu"] and "| 64 | 7 |" in records["bench_zulu"]


def test_timeout_stops_a_script_and_records_it_failed(tmp_path, scripts):
    _script(scripts, "bench_slow", "import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    assert _run(tmp_path, "--timeout", "1") == 1
    record = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))["bench_slow"]
    assert "exit code -9 (**failed: timed out**)" in record and "started" in record  # killed, output kept


def test_quick_uses_each_scripts_quick_arguments(tmp_path, scripts):
    _table_script(scripts, "bench_predict")  # registered: no --quick flag, a short part instead
    _table_script(scripts, "bench_other")  # unregistered: gets --quick
    (tmp_path / "README.md").write_text("", encoding="utf-8")
    assert _run(tmp_path, "--quick") == 0
    records = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))
    assert "bench_predict.py --part speed`" in records["bench_predict"]
    assert "| args | --part speed |" in records["bench_predict"]
    assert "bench_other.py --quick`" in records["bench_other"]


def test_no_write_changes_nothing(tmp_path, scripts, capsys):
    _table_script(scripts, "bench_rle")
    readme = tmp_path / "README.md"
    readme.write_bytes(HAND.encode("utf-8"))
    assert _run(tmp_path, "--no-write") == 0
    assert readme.read_bytes() == HAND.encode("utf-8") and not (tmp_path / "plots").exists()
    assert "| 64 | 7 |" in capsys.readouterr().out


def test_unknown_only_name_lists_the_choices(tmp_path, scripts):
    _table_script(scripts)
    with pytest.raises(SystemExit, match="bench_alpha"):
        _run(tmp_path, "--only", "nope")


def test_start_marker_without_end_marker_is_refused(tmp_path, scripts):
    _table_script(scripts)
    (tmp_path / "README.md").write_text(f"# B\n{_record.BEGIN}\nhalf a section\n", encoding="utf-8")
    with pytest.raises(ParameterError, match="end marker"):
        _run(tmp_path)
    assert (tmp_path / "README.md").read_text(encoding="utf-8").endswith("half a section\n")


def test_parser_reads_real_fixed_width_output():
    (rle,) = parse_tables(RLE_QUICK)
    assert rle.layout == "fixed"
    assert rle.header == ("labels", "original", "cells", "naive ms", "run-space ms", "speed-up", "/ goal 50 ms")
    assert rle.column("labels") == ["512²", "2048²"]
    assert rle.numbers("speed-up") == [195.3, 130.1] and rle.numbers("run-space ms") == [3.9, 5.7]
    (crops,) = parse_tables(CROPS_QUICK)  # the prose line above is not part of it
    assert crops.header == ("bits", "mode", "S", "crops ms", "per cell", "decode ms", "ratio", "goal")
    assert crops.column("mode") == ["context", "context", "masked", "window_context"]
    assert crops.column("goal") == ["<0.5 ok"] * 4 and crops.numbers("ratio")[2] == 0.189
    (evaluate,) = parse_tables(EVALUATE_QUICK)  # prose above and below
    assert evaluate.header == ("step", "seconds", "ms/image", "/ goal")
    assert evaluate.column("step")[-1] == "evaluate mAP@0.6" and evaluate.column("/ goal") == ["", "", "0.10"]


def test_parser_reads_markdown_and_bare_pipe_tables_in_order():
    text = ("title\n\n| crop px | cells/s |\n|---|---|\n| 128 | **1.6** |\n| 256 | 0.4 |\n\n"
            "N | wall s | CPU s\n10000 | 5.2 | 3.4\n50000 | 147.6 | 85.1\n")
    markdown, pipes = parse_tables(text)
    assert markdown.layout == "markdown" and markdown.numbers("cells/s") == [1.6, 0.4]
    assert pipes.layout == "pipes" and pipes.header == ("N", "wall s", "CPU s")
    assert pipes.numbers("CPU s") == [3.4, 85.1]
    assert parse_tables("just a sentence with 3 numbers 4 and 5\n") == []
    assert [number(c) for c in ("(1.81x)", "1e-05", "-", "0.595)")][:2] == [1.81, 1e-05]
    assert np.isnan(number("-")) and np.isnan(number("0.595)"))


def _coloured(img: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.all(img == np.array(colour, np.uint8), axis=-1).sum())


def test_plot_of_a_recorded_table(tmp_path, scripts):
    _script(scripts, "bench_rle", f"print({RLE_QUICK!r}, end='')\n")  # registered with a bar plot
    (tmp_path / "README.md").write_text("# B\n", encoding="utf-8")
    assert _run(tmp_path) == 0
    png = tmp_path / "plots" / "bench_rle.png"
    record = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))["bench_rle"]
    assert "![bench_rle](plots/bench_rle.png)" in record
    bgr = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert bgr is not None and bgr.shape[1] == _record.spec_for("bench_rle").plot.width and bgr.shape[0] > 100
    rgb = bgr[..., ::-1]
    assert rgb.std() > 10  # not blank
    assert _coloured(rgb, PALETTE[0]) > 500 and _coloured(rgb, PALETTE[1]) > 0  # both series drawn


def test_plot_follows_the_figures():
    spec = _record.spec_for("bench_rle").plot
    img = _record.draw_plot(spec, parse_tables(RLE_QUICK))
    faster = _record.draw_plot(spec, parse_tables(RLE_QUICK.replace("760.6", "380.3")))
    assert img.shape == faster.shape and img.dtype == np.uint8
    assert _coloured(faster, PALETTE[0]) < _coloured(img, PALETTE[0])  # a shorter naive bar


def test_line_plot_and_missing_columns():
    spec = _record.spec_for("bench_neighbors").plot
    text = "N | wall s | CPU s | bare GEMM CPU s\n10000 | 5.2 | 3.4 | 3.4\n50000 | 147.6 | 85.1 | 82.2\n"
    img = _record.draw_plot(spec, parse_tables(text))
    assert img.shape == (spec.height, spec.width, 3) and _coloured(img, PALETTE[2]) > 0
    with pytest.raises(ParameterError, match="no printed table has the columns"):
        _record.draw_plot(spec, parse_tables(RLE_QUICK))


def test_a_plot_that_cannot_be_drawn_is_noted_not_fatal(tmp_path, scripts):
    _table_script(scripts, "bench_crops")  # registered plot wants columns this table lacks
    (tmp_path / "README.md").write_text("# B\n", encoding="utf-8")
    assert _run(tmp_path) == 0
    record = _record.read_records((tmp_path / "README.md").read_text(encoding="utf-8"))["bench_crops"]
    assert "(no plot: no printed table has the columns" in record
    assert not (tmp_path / "plots" / "bench_crops.png").exists()
