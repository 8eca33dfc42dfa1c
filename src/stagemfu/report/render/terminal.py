"""Terminal output: rich renderables, with every string from a trace escaped here and nowhere else.

Range, kernel, GPU and file names come from the profiled program: they may hold rich markup
(``[red]``), terminal control sequences (``\\x1b[2J`` clears the screen) or newlines. Every string
a terminal view prints passes through :func:`terminal_line`: it becomes a rich ``Text`` (never
parsed as markup) after :func:`.text.one_line` has turned control characters into visible escapes.
Views hand this module plain strings and frames, never ``Text`` of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import polars as pl
from rich.console import Group
from rich.table import Table
from rich.text import Text

from stagemfu.report.render.text import number, one_line

NAME_WIDTH = 48
KERNEL_WIDTH = 70
LABEL_MIN_WIDTH = 12  # a narrow terminal shrinks numbers' headers, never the stage names away


def terminal_line(text: str, *, style: str = "", width: int | None = None) -> Text:
    """One line of trace-derived text, safe to print: no markup parsed, control characters escaped."""
    return Text(one_line(text, width), style=style)


def terminal_document(
    head: Sequence[str],
    sections: Iterable[tuple[str, pl.DataFrame]],
    notes: Iterable[str],
    *,
    lists: Iterable[tuple[str, Sequence[str]]] = (),
    head_style: str = "bold",
) -> Group:
    """The layout every terminal view shares: the head (its first line in ``head_style``), one table
    per section, titled lists of lines (such as the diagnosis), then the notes in yellow."""
    out: list[Text | Table] = [terminal_line(line, style=head_style if i == 0 else "") for i, line in enumerate(head)]
    out += [rich_table(title, frame) for title, frame in sections]
    for title, lines in lists:
        out += [terminal_line(title, style="bold"), *(terminal_line(line) for line in lines)]
    out += [terminal_line(f"note: {n}", style="yellow") for n in notes]
    return Group(*out)


def rich_table(title: str, frame: pl.DataFrame) -> Table:
    """A displayed table as a rich table: numbers right-aligned, names escaped and cut."""
    tbl = Table(title=terminal_line(title), title_justify="left", title_style="bold")
    for name, dtype in frame.schema.items():
        numeric = dtype.is_numeric()
        tbl.add_column(
            terminal_line(name),
            min_width=None if numeric else LABEL_MIN_WIDTH,
            justify="right" if numeric else "left",
            overflow="fold",  # a narrow terminal wraps digits, it never hides them
        )
    for row in frame.iter_rows():
        tbl.add_row(*(_cell(v, frame.columns[i]) for i, v in enumerate(row)))
    return tbl


def _cell(value: object, column: str) -> Text:
    if value is None:
        return Text("")
    if isinstance(value, (int, float)):
        return Text(number(value, column))
    return terminal_line(str(value), width=KERNEL_WIDTH if column == "kernel" else NAME_WIDTH)
