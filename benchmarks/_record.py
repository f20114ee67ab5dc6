"""What ``make bench`` records: run the benchmark scripts, keep their tables, rewrite one README section, plot.

``benchmarks/run_all.py`` is the command; this module holds its parts, each testable alone:

* :data:`BENCHES`, a registry of what is particular to a script: the arguments of its ``--quick`` run
  (scripts without a ``--quick`` flag get a short argument set) and its plot (:class:`PlotSpec`);
* :func:`machine_info` (CPU model, cores, RAM, GPU, torch and its threads) and :func:`run_script`
  (one script in a subprocess, output echoed live and captured) giving a :class:`Result`;
* :func:`render_record` (one benchmark's README record) and :func:`rewrite_readme`, which replaces
  only the text between :data:`BEGIN` and :data:`END` (added at the end of the file when absent) and
  writes atomically;
* :func:`draw_plot`, a chart of a table the script printed (parsed by :mod:`_tables`), drawn with
  :mod:`cellcls.report.draw`, so a plot always shows the recorded figures.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from _tables import Table, is_markdown_row, parse_tables
from cellcls.atomic import atomic_write_text
from cellcls.errors import ParameterError
from cellcls.registry import Registry

__all__ = ["BEGIN", "END", "PlotSpec", "BenchSpec", "BENCHES", "spec_for", "Result", "machine_info", "run_script",
           "render_record", "render_section", "read_records", "rewrite_readme", "draw_plot", "write_plot"]

BEGIN = "<!-- make-bench:begin -->"
END = "<!-- make-bench:end -->"
_RECORD = "<!-- make-bench:record {name} -->"
_RECORD_END = "<!-- make-bench:record-end -->"
_RECORD_RE = re.compile(r"<!-- make-bench:record (\S+) -->\n.*?<!-- make-bench:record-end -->\n?", re.S)
TEXT_LINES = 60  # at most this many lines of a script's non-table output go into its record
STDERR_LINES = 25  # lines of stderr kept for a failed script


@dataclass(frozen=True)
class PlotSpec:
    """How to chart one table of a script's output.

    The table is the first one holding every named column. ``kind="bar"``: one group per row,
    labelled by the ``x`` cells joined with " / "; ``kind="line"``: ``x`` is one numeric column.
    Each ``y`` column is a series; with ``series`` set, rows are also split by that column's value
    (series named "<value> <y>", or "<series column> <value>" when there is one ``y``).
    Rows whose first cell starts with one of ``drop`` are left out (e.g. a total row).
    ``width``/``height`` are the PNG's size in pixels (a bar chart's height follows its rows).
    """

    kind: str
    x: tuple[str, ...]
    y: tuple[str, ...]
    title: str
    value_label: str = ""
    series: str | None = None
    drop: tuple[str, ...] = ()
    width: int = 900
    height: int = 360

    def __post_init__(self) -> None:
        if self.kind not in ("bar", "line") or not self.x or not self.y or (self.kind == "line" and len(self.x) != 1):
            raise ParameterError(f"PlotSpec {self.title!r}: kind must be 'bar' or 'line' (one x column) with x and y "
                                 f"columns, got kind={self.kind!r} x={self.x!r} y={self.y!r}")

    def columns(self) -> tuple[str, ...]:
        return self.x + self.y + ((self.series,) if self.series else ())


@dataclass(frozen=True)
class BenchSpec:
    """What run_all needs to know of one script: its ``--quick`` arguments and its plot (if any)."""

    quick_args: tuple[str, ...] = ("--quick",)
    plot: PlotSpec | None = None


BENCHES: Registry[BenchSpec] = Registry("benchmark")
BENCHES.add("bench_classical", BenchSpec())
BENCHES.add("bench_evaluate", BenchSpec())
BENCHES.add("bench_resize", BenchSpec())
BENCHES.add("bench_io", BenchSpec(quick_args=("--repeat", "2")))
BENCHES.add("bench_mask_cache", BenchSpec(quick_args=("--repeats", "5")))
BENCHES.add("bench_synth", BenchSpec(quick_args=("--n", "20")))
BENCHES.add("bench_rle", BenchSpec(plot=PlotSpec(
    "bar", x=("labels", "original", "cells"), y=("naive ms", "run-space ms"),
    title="mask strings of every cell of one image: naive vs run-space", value_label="ms per image (one core)")))
BENCHES.add("bench_crops", BenchSpec(plot=PlotSpec(
    "bar", x=("mode", "S"), y=("ratio",), series="bits", width=760,
    title="cell crops of one 2048² image / its PNG decode (goal < 0.5)", value_label="crops time / decode time")))
BENCHES.add("bench_neighbors", BenchSpec(plot=PlotSpec(
    "line", x=("N",), y=("wall s", "CPU s", "bare GEMM CPU s"),
    title="cosine_topk, N x N x 512-d, k = 5", value_label="seconds")))
BENCHES.add("bench_fastconv", BenchSpec(quick_args=("--repeats", "1", "--no-forward"), plot=PlotSpec(
    "bar", x=("layer",), y=("literal", "conv", "winograd"), drop=("decoder total",),
    title="DPN U-Net decoder layers at a 512² input: literal, phase conv, Winograd", value_label="ms")))
BENCHES.add("bench_segment", BenchSpec(plot=PlotSpec(
    "bar", x=("row",), y=("images/s",), drop=("decode", "label_cell"), width=1100,
    title="segmentation of 2048² images: the original path against ours", value_label="images/s")))
BENCHES.add("bench_predict", BenchSpec(quick_args=("--part", "speed"), plot=PlotSpec(
    "bar", x=("crop px",), y=("cells/s (wall)", "cells/s per CPU s"), width=700,
    title="crop scoring, efficientnet_b0, 4x TTA", value_label="cells/s")))
BENCHES.add("bench_train", BenchSpec(plot=PlotSpec(
    "bar", x=("task", "input px"), y=("loader samples/s", "model samples/s"), width=760,
    title="training: loader vs model throughput", value_label="samples/s")))


def spec_for(name: str) -> BenchSpec:
    """The registry entry of script ``name`` (its stem), or the defaults (``--quick``, no plot)."""
    return BENCHES.get(name) if name in BENCHES else BenchSpec()


# --- machine and run ---------------------------------------------------------------------------------------------


def _proc_field(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.split(":")[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, str]:
    """CPU model, cores, RAM, GPU, Python, torch and its CPU threads of this machine (display strings)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    info = {"cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU",
            "cores": str(cores),
            "ram": f"{int(mem_kb.split()[0]) / 2 ** 20:.1f} GiB" if mem_kb else "unknown",
            "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = str(torch.get_num_threads())
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        info["gpu"] = ", ".join(torch.cuda.get_device_name(k) for k in range(count)) if count else "none"
    except ImportError:
        info.update(torch="not installed", threads="-", gpu="unknown (no torch)")
    return info


@dataclass(frozen=True)
class Result:
    """One script's run: its name (file stem), argv shown in the README, output and outcome.

    ``seconds`` is wall time; ``code`` the exit status (negative: killed by that signal);
    ``timed_out`` whether run_all stopped it at ``--timeout``.
    """

    name: str
    command: str
    code: int
    seconds: float
    stdout: str
    stderr: str
    started: datetime.datetime
    machine: Mapping[str, str] = field(default_factory=dict)
    load: tuple[float, ...] = ()
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out


def _pump(stream, sink, chunks: list[bytes]) -> None:
    """Copy ``stream`` to ``sink`` (a binary file or None) as it comes, keeping every chunk."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        chunks.append(chunk)
        if sink is not None:
            sink.write(chunk)
            sink.flush()


def run_script(script: Path, args: Sequence[str], *, timeout: float | None = None, echo: bool = True,
               machine: Mapping[str, str] | None = None) -> Result:
    """Run ``python script *args`` to its end, echoing its output live (``echo``) and capturing it.

    The script runs in its own process group, so ``timeout`` (seconds) stops it with its children.
    """
    argv = [sys.executable, str(script), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    out: list[bytes] = []
    err: list[bytes] = []
    sinks = [getattr(s, "buffer", None) if echo else None for s in (sys.stdout, sys.stderr)]
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, sinks[0], out)),
             threading.Thread(target=_pump, args=(proc.stderr, sinks[1], err))]
    for p in pumps:
        p.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    for p in pumps:
        p.join()
    shown = shlex.join(["python", _shown_path(script), *args])
    return Result(script.stem, shown, code, time.perf_counter() - t0, b"".join(out).decode("utf-8", "replace"),
                  b"".join(err).decode("utf-8", "replace"), started, dict(machine or {}), tuple(load), timed_out)


def _shown_path(script: Path) -> str:
    try:
        return str(script.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(script)


# --- README ------------------------------------------------------------------------------------------------------


def _safe(line: str) -> str:
    """A printed line that cannot close a record or the section (marker text defused)."""
    return line.replace("<!--", "<!- -")


def _text_block(lines: list[str]) -> str:
    fence = "````" if any("```" in line for line in lines) else "```"
    return "\n".join([fence + "text", *lines, fence])


def _output_blocks(stdout: str) -> list[str]:
    """``stdout`` as README blocks: markdown tables verbatim, every other run of lines in a text block.

    Carriage-return progress lines keep their last state; at most :data:`TEXT_LINES` text lines are
    kept in all (the last ones; a note says how many were left out).
    """
    lines = [_safe(line.rsplit("\r", 1)[-1].rstrip()) for line in stdout.split("\n")]
    text_total = sum(1 for line in lines if line.strip() and not is_markdown_row(line))
    skip = max(0, text_total - TEXT_LINES)
    blocks: list[str] = [f"({skip} earlier lines of output left out)"] if skip else []
    run: list[str] = []
    table = False

    def close() -> None:
        while run and not run[-1].strip():
            run.pop()
        if run:
            blocks.append("\n".join(run) if table else _text_block(run))
        run.clear()

    for line in lines:
        if line.strip() and not is_markdown_row(line) and skip:
            skip -= 1
            continue
        is_table = is_markdown_row(line)
        if run and is_table != table and line.strip():
            close()
        if not run and not line.strip():
            continue
        if table and not line.strip():
            close()
            continue
        table = is_table if line.strip() else table
        run.append(line.strip() if is_table else line)
    close()
    return blocks


def render_record(result: Result, *, plot: str | None = None, plot_note: str | None = None) -> str:
    """One benchmark's record for the README section (markdown, ending in a newline).

    ``plot`` is the plot's path relative to the README, ``plot_note`` why there is none (if asked for).
    """
    m = result.machine
    status = "ok" if result.ok else ("**failed: timed out**" if result.timed_out else "**failed**")
    load = f"; load average {result.load[0]:.2f} at start" if result.load else ""
    parts = [_RECORD.format(name=result.name), f"### {result.name}", "",
             f"- command: `{result.command}`",
             f"- date: {result.started:%Y-%m-%d %H:%M} UTC; wall time {result.seconds:.1f} s; "
             f"exit code {result.code} ({status})",
             f"- machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram', '?')} RAM, "
             f"GPU: {m.get('gpu', '?')}; Python {m.get('python', '?')}, torch {m.get('torch', '?')} "
             f"({m.get('threads', '?')} CPU threads){load}", ""]
    for block in _output_blocks(result.stdout):
        parts += [block, ""]
    if not result.ok:
        tail = [_safe(line.rsplit("\r", 1)[-1].rstrip()) for line in result.stderr.strip().split("\n")]
        parts += [f"Last {min(len(tail), STDERR_LINES)} lines of stderr:", "",
                  _text_block(tail[-STDERR_LINES:]), ""]
    if plot:
        parts += [f"![{result.name}]({plot})", ""]
    elif plot_note:
        parts += [f"(no plot: {plot_note})", ""]
    parts.append(_RECORD_END)
    return "\n".join(parts) + "\n"


_FULL_RUN = "Last full run: "
_FULL_RUN_RE = re.compile(r"^Last (?:full )?run: (`[^`]*`, [^\n]*UTC\.)$", re.MULTILINE)


def render_section(records: Mapping[str, str], *, command: str, when: datetime.datetime,
                   full_run: str | None = None) -> str:
    """The whole generated section, markers included: a header, then ``records`` sorted by name.

    ``full_run`` given (the ```command`, date UTC.`` text of the last run of every benchmark): this
    run (``command`` at ``when``) replaced only some records, and the header says both.
    """
    stamp = f"`{command}`, {when:%Y-%m-%d %H:%M} UTC."
    runs = [_FULL_RUN + stamp] if full_run is None else [
        _FULL_RUN + full_run, f"Since then: {stamp[:-1]} (only the records it names; each record has its own date)."]
    head = [BEGIN, "## Recorded by `make bench`", "",
            "Written by `benchmarks/run_all.py` (`make bench`, `make bench-quick`): do not edit between the\n"
            "`make-bench` markers, the next run rewrites this section; the hand-written sections above are never\n"
            "touched. A run with `--only` replaces only its benchmarks' records. Plots: `benchmarks/plots/`.", "",
            *runs, ""]
    body = [records[name].rstrip("\n") + "\n" for name in sorted(records)]
    return "\n".join(head) + "\n" + "\n".join(body) + ("\n" if body else "") + END + "\n"


def _split(text: str) -> tuple[str, str | None, str]:
    """(before, section or None, after) of the README ``text``; the markers belong to the section."""
    start = text.find(BEGIN)
    if start < 0:
        return text, None, ""
    stop = text.find(END, start)
    if stop < 0:
        raise ParameterError(f"{BEGIN} has no {END} after it; restore the end marker (or delete both) and rerun")
    stop += len(END)
    if text.startswith("\r\n", stop):
        stop += 2
    elif text.startswith("\n", stop):
        stop += 1
    return text[:start], text[start:stop], text[stop:]


def read_records(text: str) -> dict[str, str]:
    """{name: record text} of the records in the README ``text``'s generated section ({} if none)."""
    _, section, _ = _split(text)
    return {m.group(1): m.group(0) for m in _RECORD_RE.finditer(section or "")}


def rewrite_readme(path: Path, records: Mapping[str, str], *, keep_others: bool, command: str,
                   when: datetime.datetime) -> str:
    """Put ``records`` in the generated section of the README at ``path``; returns the new text.

    With ``keep_others`` the section's existing records of other benchmarks stay as they were.
    Everything outside the markers is kept byte for byte; without markers the section is appended
    (after a blank line). Written to a temporary file in the same folder, then renamed over ``path``.
    """
    path = Path(path)
    text = ""
    if path.exists():
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    before, section, after = _split(text)
    merged = dict(read_records(text)) if keep_others else {}
    merged.update(records)
    found = _FULL_RUN_RE.search(section or "") if keep_others else None
    full = found.group(1) if found and "--only" not in found.group(1) else None  # older headers named any run
    new = render_section(merged, command=command, when=when, full_run=full)
    if section is None:
        before = before + ("" if not before or before.endswith("\n\n") else "\n" if before.endswith("\n") else "\n\n")
    result = before + new + after
    atomic_write_text(path, result)  # bytes as given: no newline translation
    return result


# --- plots -------------------------------------------------------------------------------------------------------


def _ascii(text: str) -> str:
    """``text`` as the Hershey font can draw it (ASCII only: "512²" -> "512^2")."""
    text = text.replace("²", "^2").replace("³", "^3").replace("×", "x").replace("—", "-")
    return text.encode("ascii", "replace").decode("ascii")


def _find_table(tables: Sequence[Table], spec: PlotSpec) -> Table:
    for table in tables:
        if table.has(*spec.columns()):
            return table
    seen = "; ".join(str(list(t.header)) for t in tables) or "no tables"
    raise ParameterError(f"no printed table has the columns {list(spec.columns())} (found: {seen})")


def _series(table: Table, spec: PlotSpec) -> tuple[list[int], dict[str, tuple[str, list[int]]]]:
    """Rows kept (not dropped), and {series name: (its y column, its row indices)}."""
    first = [row[0].replace("**", "").strip() if row else "" for row in table.rows]
    keep = [k for k, cell in enumerate(first) if not any(cell.startswith(d) for d in spec.drop)]
    if not spec.series:
        return keep, {y: (y, keep) for y in spec.y}
    groups: dict[str, list[int]] = {}
    values = table.column(spec.series)
    for k in keep:
        groups.setdefault(values[k], []).append(k)
    out = {}
    for value, rows in groups.items():
        for y in spec.y:
            out[f"{spec.series} {value}" if len(spec.y) == 1 else f"{value} {y}"] = (y, rows)
    return keep, out


def draw_plot(spec: PlotSpec, tables: Sequence[Table]) -> np.ndarray:
    """The chart of ``spec`` for a script's parsed ``tables``: (H, W, 3) uint8 RGB, W = ``spec.width``.

    Cells that are not numbers ("-") are drawn as missing ("n/a" bars, skipped line points).
    Raises ParameterError when no table has the columns or none of their cells is a number.
    """
    from cellcls.report.draw import bar_chart, line_chart

    table = _find_table(tables, spec)
    keep, groups = _series(table, spec)
    values = {y: table.numbers(y) for y in spec.y}
    if not any(math.isfinite(values[y][k]) for y in spec.y for k in keep):
        raise ParameterError(f"the columns {list(spec.y)} hold no numbers")
    if spec.kind == "line":
        xs = table.numbers(spec.x[0])
        series = {name: ([xs[k] for k in rows], [values[y][k] for k in rows]) for name, (y, rows) in groups.items()}
        return line_chart({_ascii(k): v for k, v in series.items()}, title=_ascii(spec.title),
                          x_label=_ascii(spec.x[0]), y_label=_ascii(spec.value_label), width=spec.width,
                          height=spec.height)
    labels = [_ascii(" / ".join(row)) for row in zip(*(table.column(x) for x in spec.x))]
    categories = list(dict.fromkeys(labels[k] for k in keep))
    bars = {}
    for name, (y, rows) in groups.items():
        by_label = {labels[k]: values[y][k] for k in rows}
        bars[name] = [by_label.get(c, math.nan) for c in categories]
    return bar_chart(categories, {_ascii(k): v for k, v in bars.items()}, title=_ascii(spec.title),
                     value_label=_ascii(spec.value_label), width=spec.width)


def write_plot(path: Path, spec: PlotSpec, stdout: str) -> Path:
    """Parse a script's ``stdout``, draw ``spec`` and write it as a PNG at ``path`` (folder created)."""
    from cellcls.show import write_png

    return write_png(path, draw_plot(spec, parse_tables(stdout)))
