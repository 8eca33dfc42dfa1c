"""What the human-readable views (terminal, Markdown) show of each table: rows, columns, names.

Data outputs (JSON, CSV, SQLite) always hold every row and column. The views show the first
``rows`` rows of each table (the views sort their tables by time, largest first) with a line
saying how many were left out, only the ``columns`` and time ``bases`` asked for, and the
operators of PyTorch's ``emit_nvtx`` ranges instead of every call (``full_names`` shows them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from stagemfu.errors import StagemfuError

BASES = ("kernel", "wall", "busy", "span")  # time bases, in the order a narrow table keeps them
DEFAULT_ROWS = 25


@dataclass(frozen=True)
class TableView:
    """The view options of ``--top``/``--all``, ``--columns``, ``--base`` and ``--full-names``.

    Attributes
    ----------
    rows
        Rows shown per table; None shows every row.
    columns
        Column names to show besides the label columns, as printed or in snake case
        (``mfu_kernel`` for "MFU kernel %"), a unique prefix being enough; empty shows all.
    bases
        Time bases whose columns are shown (kernel, wall, busy, span); empty shows all.
    full_names
        Show every ``emit_nvtx`` call as its own range instead of grouping by operator.
    """

    rows: int | None = DEFAULT_ROWS
    columns: tuple[str, ...] = ()
    bases: tuple[str, ...] = ()
    full_names: bool = False

    def __post_init__(self) -> None:
        unknown = [b for b in self.bases if b not in BASES]
        if unknown:
            raise StagemfuError(f"--base {unknown[0]!r}: the time bases are {', '.join(BASES)}")

    def pick(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The label (text) columns and the numeric columns this view asks for, in table order.

        A table that has none of the requested ``columns`` is shown whole.
        """
        numeric = [c for c, dtype in frame.schema.items() if dtype.is_numeric()]
        shown = [c for c in numeric if not self.bases or not _other_base(c, self.bases)]
        if self.columns:
            wanted = [c for c in shown if any(_matches(c, want) for want in self.columns)]
            shown = wanted or shown
        return frame.select(c for c in frame.columns if c not in numeric or c in shown)

    def cut(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        """The first ``rows`` rows and how many were left out."""
        if self.rows is None or frame.height <= self.rows:
            return frame, 0
        return frame.head(self.rows), frame.height - self.rows


def normal(name: str) -> str:
    """A column name reduced to letters and digits, lower case: "MFU kernel %" -> "mfukernel"."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _matches(column: str, wanted: str) -> bool:
    key, want = normal(column), normal(wanted)
    return bool(want) and key.startswith(want)


def _other_base(column: str, bases: tuple[str, ...]) -> bool:
    """True when the column is a time or MFU on a base the view leaves out ("busy ms", "MFU span %")."""
    return any(re.search(rf"\b{b}\b", column) for b in BASES if b not in bases)


DEFAULT_VIEW = TableView()  # the views' default: top rows, every column, emit_nvtx calls grouped
