"""Terminal output: rich renderables, with every string from a trace escaped here and nowhere else.

Range, kernel, GPU and file names come from the profiled program: they may hold rich markup
(``[red]``), terminal control sequences (``\\x1b[2J`` clears the screen) or newlines. Every string
a terminal view prints passes through :func:`terminal_line`: it becomes a rich ``Text`` (never
parsed as markup) after :func:`.text.one_line` has turned control characters into visible escapes.
Views hand this module plain strings and frames, never ``Text`` of their own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from stagemfu.report.render.text import ELLIPSIS, number, one_line
from stagemfu.report.render.view import DEFAULT_VIEW, TableView

NAME_CHARS = 160  # at most this much of a name is ever shown
LABEL_MIN_WIDTH = 24  # a narrow terminal shortens names down to this, then leaves columns out


def terminal_line(text: str, *, style: str = "", width: int | None = None) -> Text:
    """One line of trace-derived text, safe to print: no markup parsed, control characters escaped."""
    return Text(one_line(text, width), style=style)


def terminal_document(
    head: Sequence[str],
    sections: Iterable[tuple[str, pl.DataFrame]],
    notes: Iterable[str],
    *,
    lists: Iterable[tuple[str, Sequence[str]]] = (),
    warnings: Sequence[str] = (),
    head_style: str = "bold",
    view: TableView = DEFAULT_VIEW,
) -> Group:
    """The layout every terminal view shares: the head (its first line in ``head_style``), warnings in
    red, one table per section fitted to the terminal's width, titled lists of lines (such as the
    diagnosis), then the notes in yellow."""
    out: list[RenderableType] = [terminal_line(line, style=head_style if i == 0 else "") for i, line in enumerate(head)]
    out += [terminal_line(f"warning: {w}", style="bold red") for w in warnings]
    out += [FittedTable(title, frame, view) for title, frame in sections]
    for title, lines in lists:
        out += [terminal_line(title, style="bold"), *(terminal_line(line) for line in lines)]
    out += [terminal_line(f"note: {n}", style="yellow") for n in notes]
    return Group(*out)


@dataclass(frozen=True)
class FittedTable:
    """A table that chooses its columns when it is printed, from the width it is given.

    Label (text) columns stay; numeric columns are kept in the order of :data:`PRIORITY` (kernel
    and wall MFU first) while they fit, and shown in table order; a line under the table names
    the columns and counts the rows left out. Headers never wrap and numbers are never cut;
    names are shortened in the middle so that different names stay different
    (:func:`short_names`).
    """

    title: str
    frame: pl.DataFrame
    view: TableView = DEFAULT_VIEW

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        frame, rows_left = self.view.cut(self.view.pick(self.frame))
        cells = {c: _texts(frame, c) for c in frame.columns}
        labels = [c for c, dtype in frame.schema.items() if not dtype.is_numeric()]
        natural = {c: max([len(c), *(len(t) for t in cells[c])]) for c in frame.columns}
        floor = {c: min(natural[c], max(len(c), LABEL_MIN_WIDTH)) for c in labels}
        kept, dropped = _fit(frame.columns, labels, natural, floor, options.max_width)
        room = options.max_width - _table_width([floor.get(c, natural[c]) for c in kept])
        widths = {c: natural[c] for c in kept if c not in labels}
        for c in labels:  # labels take what is left, in table order
            widths[c] = min(natural[c], floor[c] + max(room, 0))
            room -= widths[c] - floor[c]
        table = Table(title=terminal_line(self.title), title_justify="left", title_style="bold")
        for c in kept:
            numeric = c not in labels
            table.add_column(terminal_line(c), justify="right" if numeric else "left", width=widths[c], no_wrap=True)
        shown = {c: short_names(cells[c], widths[c]) if c in labels else cells[c] for c in kept}
        for i in range(frame.height):
            table.add_row(*(Text(shown[c][i]) for c in kept))
        yield table
        left = []
        if rows_left:
            left.append(f"{rows_left:,} more rows left out (--all shows every row; --top N shows N)")
        if dropped:
            left.append(
                f"columns left out to fit {options.max_width} characters: {', '.join(dropped)} (--columns, --base)"
            )
        for line in left:
            yield terminal_line(line, style="dim")


# Numeric columns in the order a narrow table keeps them: a header containing an earlier entry
# wins; columns matching none follow in table order.
PRIORITY = (
    "MFU kernel",
    "MFU wall",
    "kernel ms",
    "wall ms",
    "roofline",
    "kernel change",
    "wall change",
    "kernel Δ",
    "wall Δ",
    "GFLOP",
    "FLOP cover",
    "busy ms",
    "inst",
    "idle",
    "% of busy",
    "total ms",
    "count",
    "MBU",
    "MFU busy",
    "TFLOP/s",
)


def _fit(
    columns: list[str], labels: list[str], natural: dict[str, int], floor: dict[str, int], width: int
) -> tuple[list[str], list[str]]:
    """The columns kept (in table order) and those left out, numeric ones added by priority while they fit."""
    numeric = [c for c in columns if c not in labels]
    rank = {c: next((i for i, p in enumerate(PRIORITY) if p in c), len(PRIORITY)) for c in numeric}
    order = sorted(numeric, key=lambda c: (rank[c], columns.index(c)))
    kept = set(labels)
    for c in order:
        if _table_width([floor.get(k, natural[k]) for k in columns if k in kept | {c}]) <= width:
            kept.add(c)
    return [c for c in columns if c in kept], [c for c in numeric if c not in kept]


def _table_width(widths: list[int]) -> int:
    """Characters a rich table with heavy box borders takes: one border plus padding per column."""
    return 1 + sum(w + 3 for w in widths)


def _texts(frame: pl.DataFrame, column: str) -> list[str]:
    numeric = frame.schema[column].is_numeric()
    return [
        "" if v is None else number(v, column) if numeric else one_line(str(v), NAME_CHARS)
        for v in frame.get_column(column).to_list()
    ]


def short_names(names: list[str], width: int) -> list[str]:
    """Names cut to ``width`` so that different names stay different.

    A kernel's argument list (``(T1::Params)``) and closing brackets go first; then the middle
    of the name, keeping a short head and the distinguishing tail (tile shapes, alignment):
    ``void cutlass::…_128x128_64x3_nn_align8``. Names that would still look alike (calls that
    differ only in the middle, ``aten::mul, seq = 4, ...``) show the window where they differ.
    """
    out = [_short(n, width, head=max(width // 3, 1)) for n in names]
    groups: dict[str, list[int]] = {}
    for i, short in enumerate(out):
        groups.setdefault(short, []).append(i)
    for rows in groups.values():
        originals = {names[i] for i in rows}
        if len(originals) > 1:
            differ = len(os.path.commonprefix(sorted(originals)))
            for i in rows:
                out[i] = _window(names[i], width, differ)
    return out


def _window(name: str, width: int, differ: int) -> str:
    """``name`` cut to ``width`` around position ``differ``: its head, then the text from just before it."""
    if len(name) <= width:
        return name
    if differ < width - 1:
        return name[: width - 1] + ELLIPSIS
    head = min(width // 4, 12)
    start = max(differ - 8, head)
    rest = name[start:]
    room = width - head - 1
    return name[:head] + ELLIPSIS + (rest if len(rest) <= room else rest[: room - 1] + ELLIPSIS)


def _short(name: str, width: int, *, head: int) -> str:
    if len(name) <= width:
        return name
    core = _without_arguments(name).rstrip("> ")
    if len(core) <= width:
        return core
    head = min(head, width - 2)
    return core[:head] + ELLIPSIS + core[len(core) - (width - head - 1) :]


def _without_arguments(name: str) -> str:
    """``void f<int>(T1::Params)`` -> ``void f<int>``: the last top-level parenthesised group removed."""
    if not name.endswith(")"):
        return name
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i] if i > 0 else name
    return name
