"""SQLite output (``--format sqlite -o results.db``): every table of a result as a typed SQLite table.

The database is written with sqlite-utils, so ``sqlite-utils`` and Datasette users can query it
at once (``datasette results.db``, ``sqlite-utils rows results.db stages``). Columns keep their
types: integers (nanoseconds, FLOPs, counts) as INTEGER, shares and MFU as REAL, names as TEXT;
a list or struct column is stored as JSON text. A table ``stagemfu`` holds the document's
metadata as key/value rows (schema, trace, versions, notes, warnings as JSON). Names are stored
exactly as the trace has them.

The file is written beside its destination and renamed over it when complete
(:func:`stagemfu.files.replacing_path`), so an interrupted write leaves no half database, and a
database is never added to: the old file is replaced. It is never one of the command's inputs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from stagemfu.errors import StagemfuError
from stagemfu.files import refuse_overwriting, replacing_path

META_TABLE = "stagemfu"
BATCH_ROWS = 10_000


def write_sqlite(
    path: Path | None, tables: Mapping[str, pl.DataFrame], meta: Mapping[str, Any], *, inputs: Iterable[Path] = ()
) -> None:
    """Write ``tables`` and ``meta`` as a new SQLite database at ``path``.

    Raises
    ------
    StagemfuError
        No ``path`` (a database cannot go to standard output), ``path`` is one of the ``inputs``
        (the database would replace the trace), or it cannot be written.
    """
    import sqlite_utils

    if path is None:
        raise StagemfuError("--format sqlite writes a database file: give -o FILE.db")
    target = Path(path)
    refuse_overwriting({"-o": target}, inputs)
    try:
        with replacing_path(target) as temporary:
            db = sqlite_utils.Database(temporary)
            try:
                with db.conn:  # one transaction: rolled back, its journal removed, on any error
                    for name, frame in tables.items():
                        _write_table(db, name, frame)
                    db[META_TABLE].insert_all(
                        [{"key": k, "value": _json_cell(v)} for k, v in meta.items()],
                        pk="key",
                        columns={"key": str, "value": str},
                    )
            finally:
                db.close()
    except (OSError, sqlite3.Error) as err:
        why = getattr(err, "strerror", None) or err
        raise StagemfuError(f"{target}: cannot write the database ({why}); choose another output file") from err


def _write_table(db: Any, name: str, frame: pl.DataFrame) -> None:
    nested = [c for c, dtype in frame.schema.items() if dtype.is_nested()]
    frame = frame.with_columns(
        pl.col(c).map_elements(_json_cell, return_dtype=pl.Utf8, skip_nulls=True) for c in nested
    ).with_columns(pl.col(pl.Enum, pl.Categorical).cast(pl.Utf8))
    columns = {c: _sql_type(dtype) for c, dtype in frame.schema.items()}
    table = db[name]
    table.create(columns)
    for batch in frame.iter_slices(BATCH_ROWS):
        table.insert_all(batch.iter_rows(named=True), batch_size=1000)


def _sql_type(dtype: pl.DataType) -> type:
    if dtype == pl.Boolean or dtype.is_integer():
        return int
    return float if dtype.is_float() else str


def _json_cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
