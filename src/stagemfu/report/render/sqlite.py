"""SQLite output (``--format sqlite -o results.db``): every table of a result as a typed SQLite table.

The database is written with sqlite-utils, so ``sqlite-utils`` and Datasette users can query it
at once (``datasette results.db``, ``sqlite-utils rows results.db stages``). Columns keep their
types: integers (nanoseconds, FLOPs, counts) as INTEGER, shares and MFU as REAL, names as TEXT;
a list or struct column is stored as JSON text. A table ``stagemfu`` holds the document's
metadata as key/value rows (schema, trace, versions, notes, warnings as JSON). Names are stored
exactly as the trace has them.

The tables are created by sqlite-utils (its column types and DDL), then their rows are appended
through the ADBC SQLite driver, which binds the frames' Arrow columns directly: no Python object
per row. sqlite-utils' own ``insert_all`` made a dict per row and took 60 s for the million rows
of a trace of op ranges on the 2-core machine (docs/benchmarks.md).

The file is written beside its destination and renamed over it when complete
(:func:`stagemfu.files.replacing_path`), so an interrupted write leaves no half database, and a
database is never added to: the old file is replaced. It is never one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from stagemfu.errors import StagemfuError
from stagemfu.files import refuse_overwriting, replacing_path, sqlite_uri

META_TABLE = "stagemfu"


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
    import adbc_driver_manager  # deferred: only this output needs the writers
    import sqlite_utils

    if path is None:
        raise StagemfuError("--format sqlite writes a database file: give -o FILE.db")
    target = Path(path)
    refuse_overwriting({"-o": target}, inputs)
    frames = {name: _storable(frame) for name, frame in tables.items()}
    try:
        with replacing_path(target) as temporary:
            db = sqlite_utils.Database(temporary)
            try:
                with db.conn:  # one transaction: rolled back, its journal removed, on any error
                    for name, frame in frames.items():
                        db[name].create({c: _sql_type(dtype) for c, dtype in frame.schema.items()})
                    db[META_TABLE].insert_all(
                        [{"key": k, "value": _json_cell(v)} for k, v in meta.items()],
                        pk="key",
                        columns={"key": str, "value": str},
                    )
            finally:
                db.close()
            _append_rows(temporary, frames)
    except (OSError, sqlite3.Error, adbc_driver_manager.Error) as err:
        why = getattr(err, "strerror", None) or " ".join(str(err).split())
        raise StagemfuError(f"{target}: cannot write the database ({why}); choose another output file") from err


def _storable(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the types SQLite stores: nested values as JSON text, enums and categoricals as
    text, and all-null columns as text (the driver binds no column of Arrow's null type)."""
    nested = [c for c, dtype in frame.schema.items() if dtype.is_nested()]
    return frame.with_columns(
        pl.col(c).map_elements(_json_cell, return_dtype=pl.Utf8, skip_nulls=True) for c in nested
    ).with_columns(pl.col(pl.Enum, pl.Categorical, pl.Null).cast(pl.Utf8))


def _append_rows(path: Path, frames: Mapping[str, pl.DataFrame]) -> None:
    """Append every frame's rows to its table, by column name, in one transaction through ADBC."""
    import adbc_driver_manager
    import adbc_driver_sqlite

    with contextlib.ExitStack() as stack:
        db = stack.enter_context(contextlib.closing(adbc_driver_sqlite.connect(sqlite_uri(path))))
        conn = stack.enter_context(contextlib.closing(adbc_driver_manager.AdbcConnection(db)))
        conn.set_autocommit(False)
        for name, frame in frames.items():
            if frame.height == 0:
                continue
            statement = stack.enter_context(contextlib.closing(adbc_driver_manager.AdbcStatement(conn)))
            statement.set_options(**{"adbc.ingest.target_table": name, "adbc.ingest.mode": "adbc.ingest.mode.append"})
            statement.bind_stream(frame.__arrow_c_stream__())
            statement.execute_update()
        conn.commit()


def _sql_type(dtype: pl.DataType) -> type:
    if dtype == pl.Boolean or dtype.is_integer():
        return int
    return float if dtype.is_float() else str


def _json_cell(value: Any) -> str:
    """Text as it is, anything else as JSON; a lone surrogate (a byte of a file name that is not
    UTF-8, as Python decodes it) as its escape ``\\udcff``, which SQLite's UTF-8 text can hold."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
