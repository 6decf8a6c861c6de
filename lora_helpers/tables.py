"""Tables: a list of row dicts rendered as markdown, HTML or aligned plain text — the package's one renderer.

``columns`` maps a row key to its header (default: the first row's keys). A missing value or ``None`` shows
as "—"; anything else as ``str(value)``, so format numbers before (``f"{x:.2f}"``).
"""
from __future__ import annotations

import html as _html
from collections.abc import Mapping, Sequence

EMPTY = "—"


def _grid(rows: Sequence[Mapping], columns: Mapping | None) -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, cells as text, and which columns hold only numbers (right-aligned in plain text)."""
    keys = dict(columns) if columns is not None else {k: k for k in (rows[0] if rows else {})}
    cells = [[EMPTY if r.get(k) is None else str(r[k]) for k in keys] for r in rows]
    numeric = [bool(rows) and all(isinstance(r.get(k), (int, float)) for r in rows) for k in keys]
    return [str(h) for h in keys.values()], cells, numeric


def markdown(rows: Sequence[Mapping], columns: Mapping | None = None) -> str:
    """A GitHub-flavoured markdown table (``|`` in a cell escaped, line breaks as ``<br>``)."""
    head, cells, _ = _grid(rows, columns)

    def line(values):
        return "| " + " | ".join(v.replace("|", "\\|").replace("\n", "<br>") for v in values) + " |"
    return "\n".join([line(head), "|" + "---|" * len(head), *map(line, cells)])


def html(rows: Sequence[Mapping], columns: Mapping | None = None, pre: bool = False) -> str:
    """An HTML ``<table>``, cells escaped and aligned top-left; ``pre=True`` keeps each cell's line breaks
    (model replies)."""
    head, cells, _ = _grid(rows, columns)
    style = "text-align:left;vertical-align:top"

    def cell(v):
        v = _html.escape(v)
        return f"<td style='{style}'>" + (f"<pre style='white-space:pre-wrap'>{v}</pre>" if pre else v) + "</td>"
    return ("<table><thead><tr>" + "".join(f"<th style='{style}'>{_html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join("<tr>" + "".join(map(cell, r)) + "</tr>" for r in cells)
            + "</tbody></table>")


def text(rows: Sequence[Mapping], columns: Mapping | None = None) -> str:
    """Aligned plain text: headers, a rule of dashes, one line per row; number columns right-aligned."""
    head, cells, numeric = _grid(rows, columns)
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, cells)])
