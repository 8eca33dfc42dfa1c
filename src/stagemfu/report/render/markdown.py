"""Markdown rendering of result tables: GitHub-flavoured tables with every trace string escaped."""

from __future__ import annotations

import polars as pl

from stagemfu.report.render.text import markdown_cell, number

NAME_WIDTH = 120


def markdown_table(frame: pl.DataFrame) -> str:
    """A pipe table: numbers formatted as in the terminal, every string escaped."""
    header = "| " + " | ".join(markdown_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if frame.schema[c].is_numeric() else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v, c) for v, c in zip(row, frame.columns)) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])


def _cell(value: object, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return number(value, column)
    return markdown_cell(str(value), NAME_WIDTH)
