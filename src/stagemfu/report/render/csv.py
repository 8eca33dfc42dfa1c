"""CSV output: every table a command can write as CSV goes through :func:`csv_text`.

Names in a trace (NVTX ranges, kernels, paths, GPU names) are data a spreadsheet must not run.
A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula by Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``), so such text cells get a
leading ``'``, as OWASP's CSV-injection guidance recommends; numeric columns are written as they
are (a negative number stays a number). Control characters other than tab, newline and carriage
return (``\\x1b`` would act on a terminal the CSV is printed to) are written as visible escapes;
everything else, newlines included, is kept exactly, quoted by polars.
"""

from __future__ import annotations

import polars as pl

from stagemfu.report.render.text import one_line

FORMULA_START = r"^[=+\-@\t\r]"
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"


def csv_text(frame: pl.DataFrame) -> str:
    """``frame`` as CSV text with every text cell that could start a formula neutralised."""
    text_columns = [c for c, dtype in frame.schema.items() if dtype == pl.Utf8]
    safe = frame.with_columns(_without_controls(frame[c]) for c in text_columns).with_columns(
        pl.when(pl.col(c).str.contains(FORMULA_START)).then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
        for c in text_columns
    )
    return safe.write_csv()


def _without_controls(column: pl.Series) -> pl.Series:
    """The column with control characters escaped in the (rare) cells that hold any."""
    rows = column.str.contains(CONTROL).fill_null(False).arg_true()
    if rows.is_empty():
        return column
    fixed = ["".join(c if c in "\t\n\r" else one_line(c) for c in column[i]) for i in rows.to_list()]
    return column.scatter(rows, fixed)
