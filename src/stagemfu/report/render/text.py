"""Turning trace strings into safe display text.

Range and kernel names come from the profiled program and are data: they may hold markup,
quotes, control characters or be 100 kB long. Each output format escapes them its own way;
these helpers are the shared part.
"""

from __future__ import annotations

import polars as pl

ELLIPSIS = "…"


def one_line(text: str, width: int | None = None) -> str:
    """Control and other unprintable characters (newlines, ``\\x1b``, bidirectional overrides) shown
    as escapes such as ``\\n``, every other character as it is; cut to ``width`` characters."""
    if width is not None and len(text) > 4 * width:  # a 100 kB name: escape only what can be shown
        text = text[: 4 * width]
    shown = text if text.isprintable() else "".join(c if c.isprintable() else _escape(c) for c in text)
    if width is not None and len(shown) > width:
        return shown[: max(width - 1, 0)] + ELLIPSIS
    return shown


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def stage_labels(frame: pl.DataFrame) -> pl.Series:
    """Each row's label, from a frame with ``domain`` and ``name`` columns: ``name`` for the default
    domain, ``domain:name`` otherwise (nsys writes ``:name``). Utf8 even when empty; one expression,
    as a trace of op ranges has a row per operator call."""
    qualified = pl.concat_str([pl.col("domain"), pl.lit(":"), pl.col("name")])
    label = pl.when(pl.col("domain").fill_null("") != "").then(qualified).otherwise(pl.col("name"))
    return frame.select(label.cast(pl.Utf8).alias("range")).to_series()


def number(value: float | int, column: str) -> str:
    """A number as the tables show it: counts with separators, percents to 0.1, times to 0.001."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if "%" in column else f"{value:,.3f}"
