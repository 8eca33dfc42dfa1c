"""Markdown rendering of result tables: GitHub-flavoured tables with every trace string escaped."""

from __future__ import annotations

import polars as pl

from stagemfu.report.render.text import markdown_cell

NAME_WIDTH = 120


def markdown_table(frame: pl.DataFrame) -> str:
    """A pipe table; ints get thousands separators, floats four significant digits, strings escaped."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---:" if frame.schema[c].is_numeric() else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return markdown_cell(str(value), NAME_WIDTH)
