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


def stage_label(domain: str, name: str) -> str:
    """``name`` for the default domain, ``domain:name`` otherwise (nsys writes ``:name``)."""
    return f"{domain}:{name}" if domain else name


def stage_labels(frame: pl.DataFrame) -> pl.Series:
    """:func:`stage_label` for each row of a frame with ``domain`` and ``name`` columns (Utf8 even when empty)."""
    return pl.Series([stage_label(d, n) for d, n in zip(frame["domain"], frame["name"])], dtype=pl.Utf8)


def number(value: float | int, column: str) -> str:
    """A number as the tables show it: counts with separators, percents to 0.1, times to 0.001."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if "%" in column else f"{value:,.3f}"
