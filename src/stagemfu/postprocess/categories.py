"""Kernel categories: a data table of name patterns, applied as one polars expression.

The table (``data/kernel_categories.csv``, columns ``category,pattern``) is ordered; the first
pattern that matches a kernel name (case-insensitive regular expression) gives its category, and
a name that matches none is ``other``. Users extend it with a file of the same shape whose rows
are tried before the built-in ones.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import polars as pl

from stagemfu.errors import CategoryTableError

OTHER = "other"
COMMUNICATION = "communication"  # kernels whose overlap with compute is measured per stage


def category_rules(extra: str | Path | None = None) -> list[tuple[str, str]]:
    """The (category, pattern) rules in match order: the user's file first, then the built-in table."""
    builtin = resources.files("stagemfu.data").joinpath("kernel_categories.csv").read_text()
    rules = _parse(builtin, "built-in kernel_categories.csv")
    if extra is None:
        return rules
    path = Path(extra)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CategoryTableError(f"{path}: cannot read the kernel category table ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise CategoryTableError(
            f"{path}: the kernel category table is not UTF-8 text (offset {err.start}); give a CSV with "
            "the header category,pattern"
        ) from err
    return _parse(text, str(path)) + rules


def _parse(text: str, source: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"category", "pattern"} <= set(reader.fieldnames):
        raise CategoryTableError(f"{source}: a kernel category table needs the header `category,pattern`")
    rules = []
    for line, row in enumerate(reader, start=2):
        category, pattern = (row.get("category") or "").strip(), (row.get("pattern") or "").strip()
        if not category or not pattern:
            raise CategoryTableError(f"{source}:{line}: both category and pattern are needed")
        try:  # polars' engine applies the rules: no look-around, bounded size
            pl.select(pl.lit("").str.contains(f"(?i){pattern}"))
        except pl.exceptions.ComputeError as err:
            reason = " ".join(str(err).split())[:160]
            raise CategoryTableError(
                f"{source}:{line}: pattern {pattern[:80]!r} is not a regular expression polars can run ({reason})"
            ) from err
        rules.append((category, pattern))
    return rules


def category_expr(rules: list[tuple[str, str]], column: str = "name") -> pl.Expr:
    """One expression mapping a name column to its category: a when/then chain, first rule outermost."""
    expr: pl.Expr = pl.lit(OTHER)
    for category, pattern in reversed(rules):
        expr = pl.when(pl.col(column).str.contains(f"(?i){pattern}")).then(pl.lit(category)).otherwise(expr)
    return expr
