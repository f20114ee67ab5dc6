"""Tables in the printed output of the benchmark scripts, as :class:`Table` objects (for ``run_all.py``).

Three layouts are found, because the scripts print all three:

* markdown tables: consecutive lines starting with ``|``, the second one the ``|---|`` rule;
* pipe rows without the outer pipes: consecutive lines holding ``" | "`` with the same cell count;
* fixed-width columns (``f"{name:<34} {ms:>8.1f}"``): a header line and rows whose columns are
  separated by character positions that are blank on every line of the table.

Only the markdown tables are copied into the README as they are; the others are kept as printed
(in a text block) and parsed only to draw the plots, so a plot always shows the recorded figures.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Table", "parse_tables", "number", "is_markdown_row"]

_NUMBER = re.compile(r"(\()?([-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:x|%|²|ms|s|MB|GB|MiB|GiB|KB)?"
                     r"(?(1)\))")  # "195.3x", "512²", "(1.81x)"; an unpaired parenthesis is not a number
_EMPTY = {"", "-", "n/a", "nan", "—"}
_RULE = re.compile(r"^[\s\-=+:|]+$")
_EDGE = 3  # prose lines a fixed-width table may have above or below it in one block


@dataclass(frozen=True)
class Table:
    """One printed table: ``header`` (C names) and ``rows`` (R tuples of C cell strings).

    ``layout`` is how it was printed: ``"markdown"``, ``"pipes"`` or ``"fixed"``.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    layout: str

    def index(self, name: str) -> int:
        """Position of the column called ``name`` (spaces normalised); KeyError lists the columns."""
        want = _norm(name)
        for k, column in enumerate(self.header):
            if _norm(column) == want:
                return k
        raise KeyError(f"no column {name!r}; the table has {list(self.header)}")

    def has(self, *names: str) -> bool:
        """True when every column in ``names`` is in the header."""
        return all(_norm(n) in {_norm(c) for c in self.header} for n in names)

    def column(self, name: str) -> list[str]:
        """The R cells of column ``name``, as printed (bold marks removed)."""
        k = self.index(name)
        return [row[k].replace("**", "").strip() if k < len(row) else "" for row in self.rows]

    def numbers(self, name: str) -> list[float]:
        """Column ``name`` as R floats (units such as ``x``, ``%``, ``²``, ``ms`` dropped; NaN if not a number)."""
        return [number(cell) for cell in self.column(name)]


def _norm(text: str) -> str:
    return " ".join(text.replace("**", "").split()).casefold()


def number(cell: str) -> float:
    """The number a table cell shows (``"195.3x"`` -> 195.3, ``"512²"`` -> 512, ``"1,024"`` -> 1024); NaN if none."""
    text = cell.replace("**", "").strip()
    match = _NUMBER.fullmatch(text)
    if not match:
        return math.nan
    return float(match.group(2).replace(",", ""))


def _is_number(cell: str) -> bool:
    return not math.isnan(number(cell))


def is_markdown_row(line: str) -> bool:
    """True for a line of a markdown table (it starts with ``|``)."""
    return line.lstrip().startswith("|")


def _cells(line: str, *, outer: bool) -> tuple[str, ...]:
    text = line.strip()
    if outer:
        text = text[1:-1] if text.endswith("|") and len(text) > 1 else text[1:]
    return tuple(cell.strip() for cell in text.split("|"))


def _markdown(lines: list[str]) -> Table | None:
    body = [line for line in lines[1:] if not _RULE.match(line)]
    if len(lines) < 2 or not _RULE.match(lines[1]):
        return None
    return Table(_cells(lines[0], outer=True), tuple(_cells(line, outer=True) for line in body), "markdown")


def _pipes(lines: list[str]) -> list[Table]:
    """Tables of ``a | b | c`` rows: runs of >= 2 lines with the same number of cells."""
    found, run = [], []
    for line in lines + [""]:
        if " | " in line and (not run or line.count(" | ") == run[0].count(" | ")):
            run.append(line)
            continue
        if len(run) >= 2:
            found.append(Table(_cells(run[0], outer=False), tuple(_cells(r, outer=False) for r in run[1:]), "pipes"))
        run = [line] if " | " in line else []
    return found


def _segments(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) character spans separated by positions blank on every line."""
    width = max(len(line) for line in lines)
    blank = [all(c >= len(line) or line[c] == " " for line in lines) for c in range(width)]
    spans, start = [], None
    for c, free in enumerate(blank + [True]):
        if not free and start is None:
            start = c
        elif free and start is not None:
            spans.append((start, c))
            start = None
    return spans


def _merge(spans: list[tuple[int, int]], lines: list[str]) -> list[tuple[int, int]]:
    """Join spans that are only part of a column: header words over no data (to the nearer
    neighbour, right on a tie: headers are mostly right-aligned) and data under no header (to the left)."""
    spans = list(spans)

    def filled(span: tuple[int, int], rows: list[str]) -> bool:
        return any(row[span[0]:span[1]].strip() for row in rows)

    changed = True
    while changed and len(spans) > 1:
        changed = False
        for k, span in enumerate(spans):
            header_only = not filled(span, lines[1:])
            data_only = not filled(span, lines[:1])
            if not (header_only or data_only):
                continue
            if data_only or k == len(spans) - 1:
                j = k - 1 if k > 0 else k + 1
            elif k == 0:
                j = 1
            else:
                j = k - 1 if span[0] - spans[k - 1][1] < spans[k + 1][0] - span[1] else k + 1
            lo, hi = sorted((k, j))
            spans[lo:hi + 1] = [(spans[lo][0], spans[hi][1])]
            changed = True
            break
    return spans


def _fixed(lines: list[str]) -> Table | None:
    """A fixed-width table of ``lines`` (header first), or None if they do not read as one."""
    if len(lines) < 2:
        return None
    spans = _merge(_segments(lines), lines)
    if len(spans) < 2:
        return None
    grid = [tuple(line[a:b].strip() for a, b in spans) for line in lines]
    header, rows = grid[0], grid[1:]
    if any(not h or "  " in h or _is_number(h) for h in header):
        return None  # header names are single-spaced words: a wider gap means columns ran together
    numeric = 0
    for k in range(len(header)):
        values = [row[k] for row in rows if row[k].lower() not in _EMPTY]
        if values and all(_is_number(v) for v in values):
            numeric += 1
        elif values and any(_is_number(v) for v in values) and len(values) > 1:
            return None  # a column mixing numbers and words: prose or a misread
    if numeric == 0:
        return None
    return Table(header, tuple(rows), "fixed")


def _fixed_tables(block: list[str]) -> list[Table]:
    """The longest fixed-width table inside ``block``, then the same for what is left around it.

    Prose printed next to a table (a title above, a note below) sits at the block's edges, so the
    windows tried drop up to ``_EDGE`` lines at either end.
    """
    best = None
    windows = sorted(((a, b) for a in range(min(_EDGE, len(block)) + 1)
                      for b in range(max(a + 2, len(block) - _EDGE), len(block) + 1)), key=lambda w: w[0] - w[1])
    for a, b in windows:
        table = _fixed(block[a:b])
        if table is not None:
            best = (a, b - a, table)
            break
    if best is None:
        return []
    start, size, table = best
    return _fixed_tables(block[:start]) + [table] + _fixed_tables(block[start + size:])


def parse_tables(text: str) -> list[Table]:
    """Every table in a script's printed ``text``, in the order printed.

    Markdown tables first claim their lines, then pipe rows, then fixed-width blocks (runs of
    non-blank lines between blank lines; rule lines such as ``-----`` are skipped).
    """
    lines = [line.rstrip("\r") for line in text.replace("\t", "    ").split("\n")]
    found: list[tuple[int, Table]] = []
    block: list[tuple[int, str]] = []

    def flush_block() -> None:
        plain = [(i, line) for i, line in block if not _RULE.match(line)]
        piped = _pipes([line for _, line in plain])
        if piped:
            found.extend((plain[0][0], t) for t in piped)
        elif plain:
            found.extend((plain[0][0], t) for t in _fixed_tables([line.rstrip() for _, line in plain]))
        block.clear()

    k = 0
    while k < len(lines):
        if is_markdown_row(lines[k]):
            flush_block()
            start = k
            while k < len(lines) and is_markdown_row(lines[k]):
                k += 1
            table = _markdown([line.strip() for line in lines[start:k]])
            if table is not None:
                found.append((start, table))
            continue
        if lines[k].strip():
            block.append((k, lines[k]))
        else:
            flush_block()
        k += 1
    flush_block()
    return [t for _, t in sorted(found, key=lambda item: item[0])]
