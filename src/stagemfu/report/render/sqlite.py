"""SQLite output (``--format sqlite -o results.db``): every table of a result as a typed SQLite table.

The database is written with sqlite-utils, so ``sqlite-utils`` and Datasette users can query it
at once (``datasette results.db``, ``sqlite-utils rows results.db stages``). Columns keep their
types: integers (nanoseconds, FLOPs, counts) as INTEGER, shares and MFU as REAL, names as TEXT;
a list or struct column is stored as JSON text. A table ``stagemfu`` holds the document's
metadata as key/value rows (schema, trace, versions, notes, warnings as JSON). Names are stored
exactly as the trace has them.

The file is written beside its destination and renamed over it when complete, so an interrupted
write leaves no half database, and a database is never added to: the old file is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from stagemfu.errors import StagemfuError

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
    _refuse_inputs(target, inputs)
    directory = target.resolve().parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise StagemfuError(f"{target}: cannot write the database ({err.strerror or err})") from err
    os.close(handle)
    try:
        db = sqlite_utils.Database(temporary)
        with db.conn:
            for name, frame in tables.items():
                _write_table(db, name, frame)
            db[META_TABLE].insert_all(
                [{"key": k, "value": _json_cell(v)} for k, v in meta.items()],
                pk="key",
                columns={"key": str, "value": str},
            )
        db.close()
        os.replace(temporary, target)
    except OSError as err:
        raise StagemfuError(f"{target}: cannot write the database ({err.strerror or err})") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


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


def _refuse_inputs(target: Path, inputs: Iterable[Path]) -> None:
    resolved = target.resolve()
    for given in inputs:
        if Path(given).resolve() == resolved:
            raise StagemfuError(f"{target}: -o names an input of this command; write the database to another file")
