"""HTML of the report page: one self-contained file, inline CSS, no script, no external address.

Everything put in the page goes through :func:`html.escape`; images are referenced by their file
name, relative to the page, so the folder can be moved, zipped or opened from disk.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["Section", "table", "figure", "note", "page"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1e1e1e;
       margin: 0 auto; max-width: 1240px; padding: 16px 20px 48px; line-height: 1.4; background: #fff; }
h1 { font-size: 26px; margin: 4px 0 2px; }
h2 { font-size: 20px; margin: 28px 0 6px; padding-top: 8px; border-top: 2px solid #d8d8d8; }
h3 { font-size: 16px; margin: 16px 0 4px; }
p.meta, p.note, figcaption { color: #555; font-size: 14px; }
p.missing { color: #8a6d00; background: #fff7d6; padding: 6px 10px; border-radius: 4px; display: inline-block; }
p.failed { color: #9b1c1c; background: #fde2e2; padding: 6px 10px; border-radius: 4px; display: inline-block; }
nav { font-size: 14px; margin: 8px 0 4px; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
figure { margin: 10px 0 14px; }
figure img { max-width: 100%; border: 1px solid #e2e2e2; }
div.row { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #dcdcdc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f1f1; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
details { margin: 4px 0; font-size: 14px; }
summary { cursor: pointer; color: #1f5fa8; }
code { font-size: 13px; background: #f3f3f3; padding: 0 3px; }
"""


@dataclass(frozen=True)
class Section:
    """One part of the page: ``key`` (anchor), ``title``, ``status`` ("ok", "not available", "failed"),
    ``body`` (HTML), ``files`` (the PNGs it links, names relative to the page)."""

    key: str
    title: str
    status: str
    body: str
    files: tuple[str, ...] = field(default=())


def note(text: str, *, kind: str = "note") -> str:
    """A paragraph of plain ``text``; ``kind`` "note", "missing" (not available) or "failed"."""
    return f'<p class="{html.escape(kind)}">{html.escape(text)}</p>'


def figure(file_name: str, caption: str, *, width: int | None = None) -> str:
    """An image with a caption; ``file_name`` relative to the page; ``width`` in CSS pixels (default: natural)."""
    size = f' width="{int(width)}"' if width else ""
    alt = html.escape(caption, quote=True)
    return (f'<figure><img src="{html.escape(file_name, quote=True)}" alt="{alt}"{size}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, numeric: Sequence[bool] | None = None) -> str:
    """An HTML table of plain values (str, int, float: floats shown with 3 decimals, None as "-")."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)

    def cell(value: object, is_number: bool) -> str:
        if value is None or (isinstance(value, float) and value != value):
            text = "-"
        elif isinstance(value, float):
            text = f"{value:.3f}"
        else:
            text = str(value)
        klass = ' class="num"' if is_number else ""
        return f"<td{klass}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v, numeric[k] if k < len(numeric) else False) for k, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, meta: str, sections: Sequence[Section]) -> str:
    """The whole document: title, a line of ``meta`` text, a table of contents and the sections."""
    nav = "".join(f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>"
            f"<h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(meta)}</p><nav>{nav}</nav>\n"
            f"{body}\n</body></html>\n")
