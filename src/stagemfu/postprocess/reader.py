"""Read an Nsight Systems SQLite export into polars frames. The only module that touches SQLite.

Schemas differ across nsys versions (2022.1 to 2026.x): tables and columns are looked up by name,
optional ones are probed, and whatever is missing becomes a typed null column or an empty frame.
The file is opened read-only and immutable, so its bytes never change, even in a read-only
directory.

Bulk columns (kernels, runtime calls, NVTX events) come through the ADBC SQLite driver, which
hands Arrow columns to polars without building a Python object per row; the few small tables
(metadata, GPUs, strings of one kind) use the standard library's ``sqlite3``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from stagemfu.errors import TraceError
from stagemfu.postprocess.launches import match_calls, membership

# NVTX event types (nsys ENUM_NSYS_EVENT_TYPE): ranges we measure, and domain creation.
NVTX_PUSHPOP_RANGE = 59
NVTX_STARTEND_RANGE = 60
NVTXT_PUSHPOP_RANGE = 70
NVTXT_STARTEND_RANGE = 71
NVTX_DOMAIN_CREATE = 75
RANGE_EVENT_TYPES = (NVTX_PUSHPOP_RANGE, NVTX_STARTEND_RANGE, NVTXT_PUSHPOP_RANGE, NVTXT_STARTEND_RANGE)
PUSHPOP_EVENT_TYPES = (NVTX_PUSHPOP_RANGE, NVTXT_PUSHPOP_RANGE)

KERNEL_TABLE = "CUPTI_ACTIVITY_KIND_KERNEL"
MEMCPY_TABLE = "CUPTI_ACTIVITY_KIND_MEMCPY"
MEMSET_TABLE = "CUPTI_ACTIVITY_KIND_MEMSET"
GRAPH_TABLE = "CUPTI_ACTIVITY_KIND_GRAPH_TRACE"
RUNTIME_TABLE = "CUPTI_ACTIVITY_KIND_RUNTIME"

# Tables without which no stage time can be computed, and what to tell the user.
REQUIRED_TABLES = {
    "NVTX_EVENTS": "has no NVTX data (table NVTX_EVENTS); profile with `nsys profile --trace=cuda,nvtx` "
    "and put NVTX ranges around the stages",
    RUNTIME_TABLE: "has no CUDA API data (table CUPTI_ACTIVITY_KIND_RUNTIME), so GPU work cannot be tied "
    "to NVTX ranges; profile with `nsys profile --trace=cuda,nvtx`",
    "StringIds": "has no StringIds table, so kernel and range names cannot be read; re-export it with "
    "`nsys export --type sqlite`",
}
GPU_OP_TABLES = (KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE, GRAPH_TABLE)

# Standard CUDA memcpy kinds (ENUM_CUDA_MEMCPY_OPER), for exports that predate the enum tables.
MEMCPY_KINDS = {
    0: "Unknown",
    1: "Host-to-Device",
    2: "Device-to-Host",
    3: "Host-to-Array",
    4: "Array-to-Host",
    5: "Array-to-Array",
    6: "Array-to-Device",
    7: "Device-to-Array",
    8: "Device-to-Device",
    9: "Host-to-Host",
    10: "Peer-to-Peer",
    11: "Unified Host-to-Device",
    12: "Unified Device-to-Host",
    13: "Unified Device-to-Device",
}

SQLITE_MAGIC = b"SQLite format 3\x00"
FETCH_BATCH_ROWS = 1 << 18
# CUDA API functions that can launch GPU work: kernel launches, graph launches, copies, fills.
LAUNCHER_NAMES_SQL = """
    SELECT id FROM StringIds WHERE value LIKE 'cu%' AND
        (value LIKE '%Launch%' OR value LIKE '%Memcpy%' OR value LIKE '%Memset%')
"""
READ_THREADS = min(16, os.cpu_count() or 1)
MIN_SLICE_ROWS = 250_000
CALLS_SCHEMA = {"start": pl.Int64, "end": pl.Int64, "global_tid": pl.Int64, "correlation_id": pl.Int64}

OP_KIND = {KERNEL_TABLE: "kernel", MEMCPY_TABLE: "memcpy", MEMSET_TABLE: "memset", GRAPH_TABLE: "graph"}
OP_KIND_TYPE = pl.Enum(list(OP_KIND.values()))
KERNEL_NAME_COLUMNS = ("demangledName", "shortName", "mangledName")
# Names of non-kernel operations get ids below zero, apart from StringIds' non-negative ids.
MEMSET_NAME_ID = -100
GRAPH_NAME_ID = -1000
OPS_SCHEMA = {
    "kind": OP_KIND_TYPE,
    "start": pl.Int64,
    "end": pl.Int64,
    "device": pl.Int32,
    "stream": pl.Int32,
    "correlation_id": pl.Int64,
    "global_pid": pl.Int64,
    "name_id": pl.Int64,
}


@dataclass(frozen=True)
class Trace:
    """Everything stagemfu needs from one export, as polars frames (times in ns, ints).

    Attributes
    ----------
    path
        The file that was read.
    nsys_version, schema_version
        From the export's metadata table ("unknown" when absent).
    ranges
        One row per NVTX range event: ``range_id`` (the event's rowid), ``domain``, ``name``,
        ``style`` ("PushPop" or "StartEnd"), ``start``, ``end`` (null when never ended),
        ``global_tid``, ``end_global_tid`` (null unless ended on another thread).
    ops
        One row per GPU operation: ``kind`` (kernel, memcpy, memset, graph), ``start``, ``end``,
        ``device``, ``stream``, ``correlation_id``, ``global_pid``, ``name_id``, and the CUDA API
        call that launched it: ``call_start``, ``call_end``, ``global_tid`` (null when the trace
        holds no such call).
    names
        ``name_id`` → ``name`` for every operation name (kernel names come from StringIds once,
        not once per kernel; memcpy/memset/graph names are synthesised, as nsys prints them).
    gpus
        ``id``, ``name``, ``sms``, ``clock_hz`` (the maximum clock nsys records).
    notes
        What the reader noticed and the user should know.
    """

    path: Path
    nsys_version: str
    schema_version: str
    ranges: pl.DataFrame
    ops: pl.DataFrame
    names: pl.DataFrame
    gpus: pl.DataFrame
    notes: tuple[str, ...] = field(default=())


def read_trace(path: str | Path) -> Trace:
    """Read an nsys SQLite export read-only.

    Parameters
    ----------
    path
        An ``nsys export --type sqlite`` file.

    Returns
    -------
    Trace
        Frames of NVTX ranges, GPU operations with their launching calls, and GPUs.

    Raises
    ------
    TraceError
        The file is missing, not SQLite, damaged, or lacks a table the numbers need; the message
        names the file and says what to do.
    """
    path = Path(path)
    _check_file(path)
    with _open(path) as db:
        tables = _tables(db, path)
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            raise TraceError(f"{path}: {REQUIRED_TABLES[missing[0]]}")
        op_tables = [t for t in GPU_OP_TABLES if t in tables]
        if not op_tables:
            raise TraceError(
                f"{path}: has no GPU activity (no kernel, memcpy, memset or CUDA graph table); "
                "profile with `nsys profile --trace=cuda,nvtx` and make sure the program uses the GPU"
            )
        columns = {t: _columns(db, t) for t in (*op_tables, RUNTIME_TABLE, "NVTX_EVENTS")}
        nsys_version, schema_version = _versions(db, tables)
        gpus = _gpus(db, tables)
        memcpy_names = _memcpy_names(db, tables)
        launcher_ids = [r[0] for r in db.execute(LAUNCHER_NAMES_SQL)]
    uri = _uri(path)
    ranges = _read_ranges(uri, path, columns["NVTX_EVENTS"])
    ops = pl.concat([_read_ops(uri, path, t, columns[t]) for t in op_tables], how="vertical")
    names = _op_names(uri, path, ops, op_tables, columns.get(KERNEL_TABLE, set()), memcpy_names)
    ops = _with_calls(uri, path, ops, columns[RUNTIME_TABLE], launcher_ids)
    notes = []
    if gpus.is_empty():
        notes.append("the trace has no TARGET_INFO_GPU table: GPU names and SM counts are unknown")
    return Trace(path, nsys_version, schema_version, ranges, ops, names, gpus, tuple(notes))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise TraceError(f"{path}: no such file")
    if path.is_dir():
        raise TraceError(f"{path}: is a directory; give the path of an nsys SQLite export")
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as err:
        raise TraceError(f"{path}: cannot be read ({err.strerror})") from err
    if not head:
        raise TraceError(f"{path}: is empty; re-export the report with `nsys export --type sqlite`")
    if not head.startswith(SQLITE_MAGIC):
        raise TraceError(f"{path}: {not_an_export(head)}")


def not_an_export(head: bytes) -> str:
    """Say what a file that is not an nsys SQLite export seems to be, and what to do."""
    if head.lstrip()[:1] in (b"{", b"["):
        return (
            "is JSON (a PyTorch/Kineto profiler trace?), not an nsys export; stagemfu reads Nsight Systems "
            "traces: profile with `nsys profile --trace=cuda,nvtx` and pass the .nsys-rep or its SQLite export"
        )
    return "is not an SQLite file; export an nsys report with `nsys export --type sqlite REPORT.nsys-rep`"


def _uri(path: Path) -> str:
    # immutable=1: no locks, no journal, so read-only directories and files work and nothing is written.
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&immutable=1"


def _open(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection that ``with`` closes (sqlite3's own context manager only commits)."""
    return contextlib.closing(sqlite3.connect(_uri(path), uri=True))


def _tables(db: sqlite3.Connection, path: Path) -> set[str]:
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    except sqlite3.DatabaseError as err:
        raise TraceError(f"{path}: is damaged or truncated ({err}); export the report again") from err


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}


def _versions(db: sqlite3.Connection, tables: set[str]) -> tuple[str, str]:
    # 2022.x exports name the metadata table EXPORT_META_DATA; later ones META_DATA_EXPORT.
    table = next((t for t in ("META_DATA_EXPORT", "EXPORT_META_DATA") if t in tables), None)
    if table is None:
        return "unknown", "unknown"
    meta = dict(db.execute(f'SELECT name, value FROM "{table}"').fetchall())
    return (
        str(meta.get("EXPORT_PRODUCT_VERSION", "unknown")),
        str(meta.get("EXPORT_SCHEMA_VERSION", "unknown")),
    )


def _gpus(db: sqlite3.Connection, tables: set[str]) -> pl.DataFrame:
    schema = {"id": pl.Int64, "name": pl.Utf8, "sms": pl.Int64, "clock_hz": pl.Int64}
    if "TARGET_INFO_GPU" not in tables:
        return pl.DataFrame(schema=schema)
    cols = _columns(db, "TARGET_INFO_GPU")
    pick = {
        "id": "id" if "id" in cols else "NULL",
        "name": "name" if "name" in cols else "NULL",
        "sms": "smCount" if "smCount" in cols else "NULL",
        "clock_hz": "clockRate" if "clockRate" in cols else "NULL",
    }
    sql = ", ".join(f"{expr} AS {alias}" for alias, expr in pick.items())
    rows = db.execute(f"SELECT DISTINCT {sql} FROM TARGET_INFO_GPU ORDER BY 1").fetchall()
    return pl.DataFrame(rows, schema=schema, orient="row")


def _memcpy_names(db: sqlite3.Connection, tables: set[str]) -> dict[int, str]:
    names = dict(MEMCPY_KINDS)
    if "ENUM_CUDA_MEMCPY_OPER" in tables:
        names.update(db.execute("SELECT id, label FROM ENUM_CUDA_MEMCPY_OPER").fetchall())
    return names


def _col(columns: set[str], name: str, alias: str | None = None, default: str = "NULL") -> str:
    return f"{name if name in columns else default} AS {alias or name}"


def _read_ranges(uri: str, path: Path, cols: set[str]) -> pl.DataFrame:
    """NVTX range events with their domain and text resolved.

    Text is inline (``text``) or registered (``textId`` into StringIds). Domains are named by
    their eventType-75 row, matched on domainId within the same process, as nsys does.
    """
    types = ", ".join(str(t) for t in (*RANGE_EVENT_TYPES, NVTX_DOMAIN_CREATE))
    events = f"""
        SELECT rowid AS rid, start, "end", eventType, text, globalTid,
               {_col(cols, "textId")}, {_col(cols, "domainId", default="0")}, {_col(cols, "endGlobalTid")}
        FROM NVTX_EVENTS WHERE eventType IN ({types})
    """
    sql = f"""
        WITH e AS ({events}),
        named AS (
            SELECT e.*, COALESCE(e.text, s.value, '') AS label
            FROM e LEFT JOIN StringIds AS s ON s.id = e.textId
        ),
        domains AS (
            SELECT domainId, globalTid >> 24 AS pid, MIN(label) AS name
            FROM named WHERE eventType = {NVTX_DOMAIN_CREATE} GROUP BY 1, 2
        )
        SELECT n.rid AS range_id, COALESCE(d.name, '') AS domain, n.label AS name,
               CASE WHEN n.eventType IN ({", ".join(map(str, PUSHPOP_EVENT_TYPES))}) THEN 'PushPop'
                    ELSE 'StartEnd' END AS style,
               n.start AS start, n."end" AS "end", n.globalTid AS global_tid,
               n.endGlobalTid AS end_global_tid
        FROM named AS n
        LEFT JOIN domains AS d ON d.domainId = n.domainId AND d.pid = n.globalTid >> 24
        WHERE n.eventType != {NVTX_DOMAIN_CREATE}
        ORDER BY n.rid
    """
    return _fetch(
        uri,
        path,
        sql,
        schema={
            "range_id": pl.Int64,
            "domain": pl.Utf8,
            "name": pl.Utf8,
            "style": pl.Utf8,
            "start": pl.Int64,
            "end": pl.Int64,
            "global_tid": pl.Int64,
            "end_global_tid": pl.Int64,
        },
    )


def _read_ops(uri: str, path: Path, table: str, cols: set[str]) -> pl.DataFrame:
    """GPU operations of one activity table, named by ``name_id`` (see :func:`_op_names`)."""
    base = ", ".join(
        [
            "start",
            '"end"',
            _col(cols, "deviceId", "device"),
            _col(cols, "streamId", "stream"),
            "correlationId AS correlation_id",
            _col(cols, "globalPid", "global_pid"),
        ]
    )
    kind, name_id = OP_KIND[table], _name_id_sql(table, cols)
    schema = {c: t for c, t in OPS_SCHEMA.items() if c != "kind"}
    frame = _fetch_rows(uri, path, table, f"{base}, {name_id} AS name_id", schema=schema)
    return frame.with_columns(kind=pl.lit(kind, OP_KIND_TYPE)).select(list(OPS_SCHEMA))


def _name_id_sql(table: str, cols: set[str]) -> str:
    """Kernels are named by their StringIds id; other operations by negative ids of their own."""
    if table == KERNEL_TABLE:
        return next((c for c in KERNEL_NAME_COLUMNS if c in cols), "NULL")
    if table == MEMCPY_TABLE:
        return f"-1 - {'copyKind' if 'copyKind' in cols else '0'}"
    if table == MEMSET_TABLE:
        return str(MEMSET_NAME_ID)
    return f"{GRAPH_NAME_ID} - COALESCE({'graphId' if 'graphId' in cols else 'NULL'}, 0)"


def _op_names(
    uri: str, path: Path, ops: pl.DataFrame, tables: list[str], kernel_cols: set[str], memcpy_names: dict[int, str]
) -> pl.DataFrame:
    """``name_id`` → ``name`` for the operations present; strings are loaded once, not per row."""
    frames = []
    name_col = next((c for c in KERNEL_NAME_COLUMNS if c in kernel_cols), None)
    if KERNEL_TABLE in tables and name_col:
        frames.append(
            _fetch(
                uri,
                path,
                f"""
            SELECT id AS name_id, COALESCE(value, '') AS name FROM StringIds
            WHERE id IN (SELECT DISTINCT {name_col} FROM {KERNEL_TABLE})
        """,
                schema={"name_id": pl.Int64, "name": pl.Utf8},
            )
        )
    synthetic = {-1 - k: f"[CUDA memcpy {v}]" for k, v in memcpy_names.items()}
    synthetic[MEMSET_NAME_ID] = "[CUDA memset]"
    graph_ids = ops.filter(pl.col("kind") == "graph").get_column("name_id").unique().to_list()
    synthetic.update({g: f"[CUDA graph {GRAPH_NAME_ID - g}]" for g in graph_ids})
    frames.append(
        pl.DataFrame(
            {"name_id": list(synthetic), "name": list(synthetic.values())},
            schema={"name_id": pl.Int64, "name": pl.Utf8},
        )
    )
    names = pl.concat(frames)
    unnamed = ops.select("name_id").unique().join(names, on="name_id", how="anti")
    return pl.concat([names, unnamed.with_columns(name=pl.lit("[unnamed kernel]"))]).unique("name_id")


def _fetch_rows(
    uri: str,
    path: Path,
    table: str,
    columns: str,
    *,
    schema: dict[str, pl.DataType],
    where: str = "1",
    keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """``SELECT columns FROM table WHERE where``, read as rowid slices by parallel connections.

    SQLite serves concurrent readers of an immutable file independently and the driver releases
    the GIL while it reads, so the big activity tables load on several cores.
    """
    with _open(path) as db:
        lo, hi = db.execute(f'SELECT MIN(rowid), MAX(rowid) FROM "{table}"').fetchone()
    if lo is None:
        return pl.DataFrame(schema=schema)
    parts = max(1, min(READ_THREADS, (hi - lo + 1) // MIN_SLICE_ROWS))
    edges = np.linspace(lo, hi + 1, parts + 1).astype(np.int64)
    queries = [
        f'SELECT {columns} FROM "{table}" WHERE rowid >= {a} AND rowid < {b} AND ({where})'
        for a, b in zip(edges[:-1], edges[1:])
    ]
    with ThreadPoolExecutor(parts) as pool:
        frames = list(pool.map(lambda sql: _fetch(uri, path, sql, schema=schema, keep=keep), queries))
    return pl.concat(frames)


def _with_calls(
    uri: str, path: Path, ops: pl.DataFrame, runtime_cols: set[str], launcher_ids: list[int]
) -> pl.DataFrame:
    """Add to each operation the CUDA API call that launched it (same process, same correlation id).

    Most API calls launch nothing (queries, synchronisation, allocation), and the runtime table is
    the largest in an export. So SQLite first returns only calls of launching APIs (by name) whose
    correlation id some operation carries; only if an operation is left without its call are the
    remaining API calls searched for it. Either way the result is exact.
    """
    columns = "start, end, globalTid AS global_tid, correlationId AS correlation_id"
    corr, pid = ops["correlation_id"].fill_null(-1).to_numpy(), ops["global_pid"].fill_null(-1).to_numpy()

    def read_calls(where: str, wanted: np.ndarray) -> pl.DataFrame:
        test = membership(wanted)
        return _fetch_rows(
            uri,
            path,
            RUNTIME_TABLE,
            columns,
            schema=CALLS_SCHEMA,
            where=where,
            keep=lambda b: b.filter(test(b["correlation_id"].fill_null(-1).to_numpy())),
        )

    by_name = "nameId" in runtime_cols and launcher_ids
    id_list = ", ".join(str(i) for i in launcher_ids)
    calls = read_calls(f"nameId IN ({id_list})" if by_name else "1", corr[corr >= 0])
    rows = _match(calls, pid, corr, path)
    if by_name and (rows < 0).any():
        rest = read_calls(f"nameId NOT IN ({id_list}) OR nameId IS NULL", corr[(rows < 0) & (corr >= 0)])
        calls = pl.concat([calls, rest])
        rows = _match(calls, pid, corr, path)
    index = pl.Series(rows).replace(-1, None)  # a null index gathers null: no launching call
    return ops.with_columns(
        calls.select(
            pl.col("start").gather(index).alias("call_start"),
            pl.col("end").gather(index).alias("call_end"),
            pl.col("global_tid").gather(index),
        )
    )


def _match(calls: pl.DataFrame, pid: np.ndarray, corr: np.ndarray, path: Path) -> np.ndarray:
    try:
        return match_calls(pid, corr, calls["global_tid"].to_numpy(), calls["correlation_id"].to_numpy())
    except ValueError as err:
        raise TraceError(f"{path}: {err}: the export looks damaged; export the report again") from err


def _as_is(frame: pl.DataFrame) -> pl.DataFrame:
    return frame


def _fetch(
    uri: str,
    path: Path,
    sql: str,
    schema: dict[str, pl.DataType] | None = None,
    keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """Run one query through ADBC and return the result as a polars frame.

    ADBC infers a column's type from its first rows, so every text column in our queries is
    COALESCEd to a string; integer columns that start with NULLs come back as Int64. ``keep``
    filters each record batch as it arrives.
    """
    import adbc_driver_sqlite.dbapi as adbc  # deferred: import cost only when a trace is read

    try:
        with adbc.connect(uri) as conn, conn.cursor() as cur:
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(FETCH_BATCH_ROWS)})
            cur.execute(sql)
            reader = cur.fetch_record_batch()
            parts = [(keep or _as_is)(pl.from_arrow(batch)) for batch in reader]
            frame = pl.concat(parts) if parts else pl.from_arrow(reader.schema.empty_table())
    except Exception as err:  # the driver raises its own error classes and OSError for data errors
        raise TraceError(f"{path}: could not be read ({str(err).splitlines()[0]}); export the report again") from err
    assert isinstance(frame, pl.DataFrame)
    if schema:
        frame = frame.select([pl.col(c).cast(t) for c, t in schema.items()])
    return frame
