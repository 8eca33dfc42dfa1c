"""SQLite I/O for nsys exports: read-only connections, queries into polars, errors as TraceError.

The file is opened read-only and immutable, so its bytes never change, even in a read-only
directory. Bulk columns (kernels, runtime calls, NVTX events) come through the ADBC SQLite driver,
which hands Arrow columns to polars without building a Python object per row; the few small
tables (metadata, GPUs, strings of one kind) use the standard library's ``sqlite3``.

Whatever the file holds, a read ends in a frame of the asked schema or in one TraceError naming
the file: SQLite's errors (a damaged page), the driver's, a column holding text where integers
belong, and names that are not UTF-8 (read with replacement characters).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from stagemfu.errors import TraceError
from stagemfu.files import sqlite_uri
from stagemfu.postprocess.concurrency import CHUNK_WORKERS, CPUS

FETCH_BATCH_ROWS = 1 << 18
READ_THREADS = min(16, CPUS)
# Connections reading one chunk's span, when CHUNK_WORKERS chunks are read at once: each query
# costs a connection and a conversion under the GIL, so more slices than cores only add those.
CHUNK_READ_THREADS = max(1, READ_THREADS // CHUNK_WORKERS)
MIN_SLICE_ROWS = 1 << 16


def uri(path: Path) -> str:
    """The export's SQLite URI: immutable=1 means no locks and no journal, so nothing is ever written."""
    return sqlite_uri(path, "mode=ro&immutable=1")


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection that ``with`` closes (sqlite3's own context manager only commits).

    Text that is not valid UTF-8 (a damaged page, or a program that named a range with raw
    bytes) is read with replacement characters rather than failing the whole read.
    """
    db = sqlite3.connect(uri(path), uri=True)
    db.text_factory = lambda raw: raw.decode("utf-8", "replace")
    return contextlib.closing(db)


@contextlib.contextmanager
def damage_errors(path: Path) -> Iterator[None]:
    """Turn an SQLite error (a damaged page met anywhere in a read) into one TraceError naming the file."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError) as err:  # SQLite's message may quote damaged bytes
        detail = (str(err).splitlines() or [type(err).__name__])[0]
        raise TraceError(f"{path}: is damaged or unreadable ({detail}); export the report again") from err


def table_names(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The table's column names, lower-cased (SQLite matches names without regard to case)."""
    return {str(r[1]).lower() for r in db.execute(f"PRAGMA table_info({quote(table)})")}


def has(cols: set[str], name: str) -> bool:
    return name.lower() in cols


def quote(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def col(cols: set[str], name: str, alias: str | None = None, default: str = "NULL") -> str:
    """``name AS alias``, or ``default AS alias`` when the table has no such column."""
    return f"{quote(name) if has(cols, name) else default} AS {alias or name}"


def integers(rows: list[tuple], width: int, path: Path, what: str) -> np.ndarray:
    """Rows of integers from SQLite as an (n, width) array; a value of another type means a damaged export."""
    if any(type(v) is not int for row in rows for v in row):
        raise TraceError(f"{path}: {what} hold values that are not integers; the export is damaged: export it again")
    return np.array(rows, dtype=np.int64).reshape(-1, width)


def fetch(
    uri: str,
    path: Path,
    sql: str,
    schema: dict[str, pl.DataType],
    keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    what: str = "",
) -> pl.DataFrame:
    """Run one query through ADBC and return the result as a polars frame of ``schema``.

    ADBC infers a column's type from its first rows, so every text column in our queries is
    COALESCEd to a string (or read as bytes, see :func:`text`); integer columns that start with
    NULLs come back as Int64, and a column holding values of several types comes back as text or
    bytes, which is refused here (``what`` names the table in the message). ``keep`` filters each
    record batch as it arrives, so a read of a whole table holds only what it keeps.
    """
    if keep is None:
        frame = query(uri, path, sql)
    else:
        parts = [keep(checked(batch, schema, path, what)) for batch in batches(uri, path, sql)]
        frame = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    if frame.width == 0:  # no column: a result of no rows
        frame = pl.DataFrame(schema=schema)
    frame = checked(frame, schema, path, what)
    # Narrow ids (device, stream) out of their type's range are damage: read as unknown (null).
    return frame.select(
        [(text(frame[c]) if t == pl.Utf8 else frame[c]).cast(t, strict=False) for c, t in schema.items()]
    )


def checked(frame: pl.DataFrame, schema: dict[str, pl.DataType], path: Path, what: str) -> pl.DataFrame:
    """``frame``, after checking that every column meant to hold integers does (nulls allowed)."""
    for column, dtype in schema.items():
        if dtype.is_integer() and column in frame.columns:
            got = frame.schema[column]
            if not (got.is_integer() or got == pl.Null):
                raise TraceError(
                    f"{path}: {what + ' ' if what else ''}column {column!r} holds {got} values where integers "
                    "belong; the export is damaged: export the report again"
                )
    return frame


def text(column: pl.Series) -> pl.Series:
    """A text column from bytes, with replacement characters where the bytes are not UTF-8.

    Strings the ADBC driver reads are not checked for UTF-8, and one invalid byte in a range
    or kernel name would make polars fail (or panic) later, so names are read as bytes and
    decoded here: in one pass when all are valid, the distinct invalid ones by Python's codec.
    """
    if column.dtype != pl.Binary:
        return column
    try:
        return column.cast(pl.Utf8)
    except pl.exceptions.ComputeError:
        distinct = column.unique().drop_nulls()
        decoded = pl.Series([raw.decode("utf-8", "replace") for raw in distinct.to_list()], dtype=pl.Utf8)
        return column.replace_strict(distinct, decoded, default=None, return_dtype=pl.Utf8).alias(column.name)


def query(uri: str, path: Path, sql: str) -> pl.DataFrame:
    """The whole result of one query, handed by the ADBC driver to polars as an Arrow C stream.

    The driver manager's own statement API needs no pyarrow: neither its import nor a Python
    object per record batch, both paid under the GIL while other chunks wait for it.
    """
    import adbc_driver_manager  # deferred: import cost only when a trace is read
    import adbc_driver_sqlite

    with read_errors(path), contextlib.ExitStack() as stack:
        db = stack.enter_context(contextlib.closing(adbc_driver_sqlite.connect(uri)))
        conn = stack.enter_context(contextlib.closing(adbc_driver_manager.AdbcConnection(db)))
        stmt = stack.enter_context(contextlib.closing(adbc_driver_manager.AdbcStatement(conn)))
        stmt.set_options(**{"adbc.sqlite.query.batch_rows": str(FETCH_BATCH_ROWS)})
        stmt.set_sql_query(sql)
        stream, _ = stmt.execute_query()
        return pl.DataFrame(stream)


def batches(uri: str, path: Path, sql: str) -> Iterator[pl.DataFrame]:
    """The result of one query through ADBC's DB-API, as polars frames of up to ``FETCH_BATCH_ROWS`` rows."""
    import adbc_driver_sqlite.dbapi as adbc  # deferred: imports pyarrow, needed only here

    with read_errors(path), adbc.connect(uri) as conn, conn.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(FETCH_BATCH_ROWS)})
        cur.execute(sql)
        for batch in cur.fetch_record_batch():
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame


@contextlib.contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Turn the driver's errors into one TraceError that names the file."""
    try:
        yield
    except TraceError:
        raise
    except Exception as err:  # the driver raises its own error classes and OSError for data errors
        raise TraceError(f"{path}: could not be read ({str(err).splitlines()[0]}); export the report again") from err


def fetch_rows(
    uri: str,
    path: Path,
    table: str,
    columns: str,
    *,
    schema: dict[str, pl.DataType],
    where: str = "1",
    keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    rowids: tuple[int, int] | None = None,
) -> pl.DataFrame:
    """``SELECT columns FROM table WHERE where``, read as rowid slices by parallel connections.

    ``rowids`` limits the read to rows whose rowid lies in [lo, hi] (a B-tree range: only those
    rows are visited): one chunk's span, read by its share of the connections
    (``CHUNK_READ_THREADS``) while other chunks are read too; a whole table gets them all.

    SQLite serves concurrent readers of an immutable file independently and the driver releases
    the GIL while it reads, so the big activity tables load on several cores.
    """
    queries = [
        f"SELECT {columns} FROM {quote(table)} WHERE {piece} AND ({where})"
        for piece in slices(path, table, rowids, READ_THREADS if rowids is None else CHUNK_READ_THREADS)
    ]
    if not queries:
        return pl.DataFrame(schema=schema)
    with ThreadPoolExecutor(len(queries)) as pool:
        frames = list(pool.map(lambda sql: fetch(uri, path, sql, schema=schema, keep=keep, what=table), queries))
    return pl.concat(frames)


def slices(path: Path, table: str, rowids: tuple[int, int] | None = None, threads: int = READ_THREADS) -> list[str]:
    """Conditions splitting ``table`` (or its rowids in [lo, hi]) into rowid slices, one per reading thread."""
    if rowids is None:
        with connect(path) as db:
            lo, hi = rowid_range(db, table)
    else:
        lo, hi = rowids if rowids[0] <= rowids[1] else (None, None)
    if lo is None or hi is None:
        return []
    parts = max(1, min(threads, (hi - lo + 1) // MIN_SLICE_ROWS))
    edges = np.linspace(lo, hi + 1, parts + 1).astype(np.int64)
    return [f"rowid >= {a} AND rowid < {b}" for a, b in zip(edges[:-1], edges[1:])]


def rowid_range(db: sqlite3.Connection, table: str) -> tuple[int | None, int | None]:
    """The smallest and largest rowid of ``table``: two B-tree descents.

    Asked together in one statement, SQLite would scan the whole table for them (its min/max
    shortcut takes a single aggregate only): seconds on a runtime table of tens of millions of rows.
    """
    lo = db.execute(f"SELECT MIN(rowid) FROM {quote(table)}").fetchone()[0]
    hi = db.execute(f"SELECT MAX(rowid) FROM {quote(table)}").fetchone()[0]
    return lo, hi
