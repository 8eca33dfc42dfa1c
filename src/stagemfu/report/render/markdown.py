"""Markdown output: GitHub-flavoured documents and tables, with every string escaped here.

Every string a Markdown view writes (table cells, bullet lines, notes) passes through
:func:`markdown_cell`, so a name holding a pipe, a newline or HTML cannot break the table or the page.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import polars as pl

from stagemfu.report.render.text import number, one_line
from stagemfu.report.render.view import DEFAULT_VIEW, TableView

NAME_WIDTH = 120


def markdown_cell(text: str, width: int | None = None) -> str:
    """A Markdown table cell: one line, &, < and > as HTML entities, pipes and backslashes escaped.

    Quotes stay as they are: outside an HTML attribute they cannot start markup.
    """
    return html.escape(one_line(text, width), quote=False).replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(frame: pl.DataFrame) -> str:
    """A pipe table: numbers formatted as in the terminal, every string escaped."""
    header = "| " + " | ".join(markdown_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if frame.schema[c].is_numeric() else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v, c) for v, c in zip(row, frame.columns)) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])


def markdown_document(
    heading: str,
    lines: Iterable[str],
    sections: Iterable[tuple[str, pl.DataFrame]],
    *,
    lists: Iterable[tuple[str, Sequence[str]]] = (),
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
    view: TableView = DEFAULT_VIEW,
) -> str:
    """The layout every Markdown view shares: a bullet summary, the warnings, one table per section
    (the rows and columns ``view`` picks, with a line counting the rows left out), titled bullet
    lists (shown even when empty), then the notes when there are any."""
    out = [f"# {heading}", ""] + _bullets(lines)
    if warnings:
        out += [""] + [f"> **Warning:** {markdown_cell(w)}" for w in warnings]
    for title, frame in sections:
        shown, left_out = view.cut(view.pick(frame))
        out += ["", f"## {title}", "", markdown_table(shown)]
        if left_out:
            out += ["", f"*{left_out:,} more rows left out (--all shows every row; JSON and CSV hold them all).*"]
    for title, items in [*lists, *([("Notes", notes)] if notes else [])]:
        out += ["", f"## {title}", ""] + _bullets(items)
    return "\n".join(out) + "\n"


def _bullets(lines: Iterable[str]) -> list[str]:
    return [f"- {markdown_cell(line)}" for line in lines]


def _cell(value: object, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return number(value, column)
    return markdown_cell(str(value), NAME_WIDTH)
