"""nsys export tables into the format-neutral trace: what each table and column means.

Schemas differ across nsys versions (2022.1 to 2026.x): tables and columns are looked up by
name, optional ones are probed, and whatever is missing becomes a typed null column or an empty
frame; a column the numbers need is checked before anything is read.

nsys packs a process and a thread into one integer (``globalTid``: process id in bits 24-47,
thread id below, the machine above) and names a GPU operation's process by that integer with
the thread bits cleared (``globalPid``). Operations are matched to their launching calls on those
packed ids, and unpacked into the contract's ``pid``/``tid`` only when a frame leaves this
package (:func:`to_contract_ops`, :func:`read_ranges`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import polars as pl

from stagemfu.errors import TraceError
from stagemfu.postprocess.launches import match_calls, membership
from stagemfu.postprocess.nsys.sqlite import col, columns, fetch, fetch_rows, has, quote
from stagemfu.postprocess.trace import GPUS_SCHEMA, OP_KIND_TYPE, OPS_SCHEMA, PROCESSES_SCHEMA

TID_BITS = 1 << 24  # globalTid: thread id below this, process id above (bits 24-47)
OS_ID_MASK = TID_BITS - 1

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
# Columns without which a table cannot be read (others are optional and read as nulls when absent).
OP_COLUMNS = ("start", "end", "correlationId")
REQUIRED_COLUMNS = {
    "NVTX_EVENTS": ("start", "end", "eventType", "globalTid"),
    RUNTIME_TABLE: ("start", "end", "globalTid", "correlationId"),
    "StringIds": ("id", "value"),
    **{t: OP_COLUMNS for t in GPU_OP_TABLES},
}

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
# CUDA API functions that can launch GPU work: kernel launches, graph launches, copies, fills.
LAUNCHER_NAMES_SQL = """
    SELECT id FROM StringIds WHERE typeof(id) = 'integer' AND value LIKE 'cu%' AND
        (value LIKE '%Launch%' OR value LIKE '%Memcpy%' OR value LIKE '%Memset%')
"""
OP_KIND = {KERNEL_TABLE: "kernel", MEMCPY_TABLE: "memcpy", MEMSET_TABLE: "memset", GRAPH_TABLE: "graph"}
KERNEL_NAME_COLUMNS = ("demangledName", "shortName", "mangledName")
# Names of non-kernel operations get ids below zero, apart from StringIds' non-negative ids: memcpy
# kinds -1 - kind (kinds from 0 below MEMCPY_KINDS_MAX; others count as kind 0, "Unknown"), then
# kernels without a name, memsets, and CUDA graphs from GRAPH_NAME_ID down.
MEMCPY_KINDS_MAX = 98
UNNAMED = "[unnamed kernel]"
UNNAMED_NAME_ID = -99
MEMSET_NAME_ID = -100
GRAPH_NAME_ID = -1000
# Operations as read from the activity tables (packed process ids), before their launching calls.
TABLE_OPS_SCHEMA = {
    "kind": OP_KIND_TYPE,
    "start": pl.Int64,
    "end": pl.Int64,
    "device": pl.Int32,
    "stream": pl.Int32,
    "correlation_id": pl.Int64,
    "global_pid": pl.Int64,
    "name_id": pl.Int64,
}
CALLS_SCHEMA = {"start": pl.Int64, "end": pl.Int64, "global_tid": pl.Int64, "correlation_id": pl.Int64}


def require_columns(path: Path, table: str, cols: set[str]) -> None:
    """Refuse a table that lacks a column the numbers need (SQLite would read a missing "end" as a string)."""
    missing = [c for c in REQUIRED_COLUMNS.get(table, ()) if not has(cols, c)]
    if missing:
        raise TraceError(
            f"{path}: table {table} has no column {missing[0]!r}; this is not an nsys export stagemfu can read "
            "(damaged, or an unknown schema): export the report again with `nsys export --type sqlite`"
        )


def versions(db: sqlite3.Connection, tables: set[str]) -> tuple[str, str]:
    """The nsys version that exported the file and the export's schema version ("unknown" when absent)."""
    # 2022.x exports name the metadata table EXPORT_META_DATA; later ones META_DATA_EXPORT.
    table = next((t for t in ("META_DATA_EXPORT", "EXPORT_META_DATA") if t in tables), None)
    if table is None or not {"name", "value"} <= columns(db, table):
        return "unknown", "unknown"
    meta = dict(db.execute(f'SELECT CAST("name" AS TEXT), CAST("value" AS TEXT) FROM {quote(table)}').fetchall())
    return (
        str(meta.get("EXPORT_PRODUCT_VERSION") or "unknown"),
        str(meta.get("EXPORT_SCHEMA_VERSION") or "unknown"),
    )


def _integer(cols: set[str], column: str) -> str:
    """A column's value when it is an integer, else NULL: a number of the wrong type reads as unknown."""
    if not has(cols, column):
        return "NULL"
    return f"CASE WHEN typeof({quote(column)}) = 'integer' THEN {quote(column)} END"


def gpus(db: sqlite3.Connection, tables: set[str]) -> pl.DataFrame:
    """The GPUs (TARGET_INFO_GPU): ``id``, ``name``, ``sms``, ``clock_hz``."""
    if "TARGET_INFO_GPU" not in tables:
        return pl.DataFrame(schema=GPUS_SCHEMA)
    cols = columns(db, "TARGET_INFO_GPU")
    pick = {
        "id": _integer(cols, "id"),
        "name": 'CAST("name" AS TEXT)' if has(cols, "name") else "NULL",
        "sms": _integer(cols, "smCount"),
        "clock_hz": _integer(cols, "clockRate"),
    }
    sql = ", ".join(f"{expr} AS {alias}" for alias, expr in pick.items())
    rows = db.execute(f"SELECT DISTINCT {sql} FROM TARGET_INFO_GPU ORDER BY 1").fetchall()
    return pl.DataFrame(rows, schema=GPUS_SCHEMA, orient="row")


def processes(db: sqlite3.Connection, tables: set[str]) -> pl.DataFrame:
    """The processes nsys named (PROCESSES): ``pid`` (the operating system's), ``name``."""
    if "PROCESSES" not in tables or not {"pid", "name"} <= columns(db, "PROCESSES"):
        return pl.DataFrame(schema=PROCESSES_SCHEMA)
    rows = db.execute(
        """SELECT DISTINCT "pid", CAST("name" AS TEXT) FROM PROCESSES WHERE typeof("pid") = 'integer' ORDER BY 1"""
    ).fetchall()
    return pl.DataFrame(rows, schema=PROCESSES_SCHEMA, orient="row").unique("pid", keep="first", maintain_order=True)


def memcpy_names(db: sqlite3.Connection, tables: set[str]) -> dict[int, str]:
    """Memcpy kind → label, from ENUM_CUDA_MEMCPY_OPER where the export has it."""
    names = dict(MEMCPY_KINDS)
    if "ENUM_CUDA_MEMCPY_OPER" in tables and {"id", "label"} <= columns(db, "ENUM_CUDA_MEMCPY_OPER"):
        names.update(
            db.execute(
                'SELECT "id", CAST("label" AS TEXT) FROM ENUM_CUDA_MEMCPY_OPER '
                """WHERE typeof("id") = 'integer' AND "label" IS NOT NULL"""
            ).fetchall()
        )
    return names


def read_ranges(uri: str, path: Path, cols: set[str]) -> pl.DataFrame:
    """NVTX range events with their domain and text resolved, as the contract's ranges.

    Text is inline (``text``) or registered (``textId`` into StringIds). Domains are named by
    their eventType-75 row, matched on domainId within the same process, as nsys does. Texts
    come as bytes (decoded by :func:`stagemfu.postprocess.nsys.sqlite.fetch`, with replacement
    characters where they are not UTF-8).
    """
    types = ", ".join(str(t) for t in (*RANGE_EVENT_TYPES, NVTX_DOMAIN_CREATE))
    events = f"""
        SELECT rowid AS rid, "start" AS start, "end" AS "end", "eventType" AS eventType, {col(cols, "text")},
               "globalTid" AS globalTid, {col(cols, "textId")}, {col(cols, "domainId", default="0")},
               {col(cols, "endGlobalTid")}
        FROM NVTX_EVENTS WHERE "eventType" IN ({types})
    """
    sql = f"""
        WITH e AS ({events}),
        named AS (
            SELECT e.*, CAST(COALESCE(e.text, s."value", '') AS BLOB) AS label
            FROM e LEFT JOIN StringIds AS s ON s."id" = e.textId
        ),
        domains AS (
            SELECT domainId, globalTid >> 24 AS pid, MIN(label) AS name
            FROM named WHERE eventType = {NVTX_DOMAIN_CREATE} GROUP BY 1, 2
        )
        SELECT n.rid AS range_id, COALESCE(d.name, X'') AS domain, n.label AS name,
               CASE WHEN n.eventType IN ({", ".join(map(str, PUSHPOP_EVENT_TYPES))}) THEN 'PushPop'
                    ELSE 'StartEnd' END AS style,
               n.start AS start, n."end" AS "end", n.globalTid AS global_tid,
               n.endGlobalTid AS end_global_tid
        FROM named AS n
        LEFT JOIN domains AS d ON d.domainId = n.domainId AND d.pid = n.globalTid >> 24
        WHERE n.eventType != {NVTX_DOMAIN_CREATE}
        ORDER BY n.rid
    """
    schema = {"range_id": pl.Int64, "domain": pl.Utf8, "name": pl.Utf8, "style": pl.Utf8, "start": pl.Int64}
    frame = fetch(
        uri, path, sql, schema={**schema, "end": pl.Int64, "global_tid": pl.Int64, "end_global_tid": pl.Int64}
    )
    tid, end_tid = pl.col("global_tid"), pl.col("end_global_tid")
    return frame.select(
        *schema,
        "end",
        _os_pid(tid).alias("pid"),
        (tid % TID_BITS).alias("tid"),
        pl.when(end_tid != tid).then(end_tid % TID_BITS).alias("end_tid"),
    )


def _os_pid(packed: pl.Expr) -> pl.Expr:
    """The operating system's process id in a packed globalTid or globalPid (bits 24-47)."""
    return (packed // TID_BITS) % TID_BITS


def read_ops(
    uri: str, path: Path, table: str, cols: set[str], *, where: str = "1", rowids: tuple[int, int] | None = None
) -> pl.DataFrame:
    """GPU operations of one activity table (``TABLE_OPS_SCHEMA``), named by ``name_id`` (see :func:`op_names`)."""
    base = ", ".join(
        [
            '"start" AS start',
            '"end" AS "end"',
            col(cols, "deviceId", "device"),
            col(cols, "streamId", "stream"),
            '"correlationId" AS correlation_id',
            col(cols, "globalPid", "global_pid"),
        ]
    )
    kind, name_id = OP_KIND[table], name_id_sql(table, cols)
    schema = {c: t for c, t in TABLE_OPS_SCHEMA.items() if c != "kind"}
    frame = fetch_rows(uri, path, table, f"{base}, {name_id} AS name_id", schema=schema, where=where, rowids=rowids)
    return frame.with_columns(kind=pl.lit(kind, OP_KIND_TYPE)).select(list(TABLE_OPS_SCHEMA))


def name_id_sql(table: str, cols: set[str]) -> str:
    """Kernels are named by their StringIds id; other operations by negative ids of their own.

    Values outside their range (a damaged export) fall back to the kind's default, so that no two
    kinds of operation ever share an id.
    """

    def within(column: str, low: int, high: int, default: int) -> str:
        if not has(cols, column):
            return str(default)
        return f"CASE WHEN {quote(column)} BETWEEN {low} AND {high} THEN {quote(column)} ELSE {default} END"

    if table == KERNEL_TABLE:
        name = next((c for c in KERNEL_NAME_COLUMNS if has(cols, c)), None)
        return within(name, 0, np.iinfo(np.int64).max, UNNAMED_NAME_ID) if name else str(UNNAMED_NAME_ID)
    if table == MEMCPY_TABLE:
        return f"-1 - {within('copyKind', 0, MEMCPY_KINDS_MAX - 1, 0)}"
    if table == MEMSET_TABLE:
        return str(MEMSET_NAME_ID)
    return f"{GRAPH_NAME_ID} - {within('graphId', 0, np.iinfo(np.int64).max + GRAPH_NAME_ID, 0)}"


def op_names(uri: str, path: Path, name_ids: pl.Series, memcpy_labels: dict[int, str]) -> pl.DataFrame:
    """``name_id`` → ``name`` for the operations' name ids; strings are loaded once, not per row."""
    frames = []
    kernel_ids = name_ids.filter(name_ids >= 0).unique().sort()
    if len(kernel_ids):  # the ids are known already: asking SQLite for them again would scan the kernels
        frames.append(
            fetch(
                uri,
                path,
                f"""
            SELECT "id" AS name_id, CAST(COALESCE("value", '') AS BLOB) AS name FROM StringIds
            WHERE "id" IN ({", ".join(map(str, kernel_ids.to_list()))})
        """,
                schema={"name_id": pl.Int64, "name": pl.Utf8},
                what="StringIds",
            )
        )
    synthetic = {-1 - k: f"[CUDA memcpy {v}]" for k, v in memcpy_labels.items() if 0 <= k < MEMCPY_KINDS_MAX}
    synthetic[MEMSET_NAME_ID] = "[CUDA memset]"
    synthetic[UNNAMED_NAME_ID] = UNNAMED
    graph_ids = name_ids.filter(name_ids <= GRAPH_NAME_ID).unique().to_list()
    synthetic.update({g: f"[CUDA graph {GRAPH_NAME_ID - g}]" for g in graph_ids})
    frames.append(
        pl.DataFrame(
            {"name_id": list(synthetic), "name": list(synthetic.values())},
            schema={"name_id": pl.Int64, "name": pl.Utf8},
        )
    )
    names = pl.concat(frames)
    unnamed = name_ids.unique().to_frame("name_id").join(names, on="name_id", how="anti")
    return pl.concat([names, unnamed.with_columns(name=pl.lit(UNNAMED))]).unique("name_id")


def with_calls(
    uri: str,
    path: Path,
    ops: pl.DataFrame,
    runtime_cols: set[str],
    launcher_ids: list[int],
    *,
    rowids: tuple[int, int] | None = None,
) -> pl.DataFrame:
    """The operations with the CUDA API call that launched each (same process, same correlation id),
    as the contract's operations (:func:`to_contract_ops`).

    Most API calls launch nothing (queries, synchronisation, allocation), and the runtime table is
    the largest in an export. So SQLite first returns only calls of launching APIs (by name) whose
    correlation id some operation carries; only if an operation is left without its call are the
    remaining API calls searched for it. Either way the result is exact. ``rowids`` limits the
    first search to that span of the runtime table and to the operations' range of correlation
    ids (see :class:`stagemfu.postprocess.nsys.chunks.OpChunks`); the second always reads the
    whole table, for any call.
    """
    call_columns = '"start" AS start, "end" AS "end", "globalTid" AS global_tid, "correlationId" AS correlation_id'
    corr, pid = ops["correlation_id"].fill_null(-1).to_numpy(), ops["global_pid"].fill_null(-1).to_numpy()

    def read_calls(where: str, wanted: np.ndarray | None, rowids: tuple[int, int] | None) -> pl.DataFrame:
        test = membership(wanted) if wanted is not None else None
        return fetch_rows(
            uri,
            path,
            RUNTIME_TABLE,
            call_columns,
            schema=CALLS_SCHEMA,
            where=where,
            keep=(lambda b: b.filter(test(b["correlation_id"].fill_null(-1).to_numpy()))) if test else None,
            rowids=rowids,
        )

    by_name = has(runtime_cols, "nameId") and launcher_ids
    id_list = ", ".join(str(i) for i in launcher_ids)
    launching = f'"nameId" IN ({id_list})' if by_name else "1"
    known = corr[corr >= 0]
    if rowids is not None:  # a chunk's span holds calls of neighbouring chunks too: SQLite drops most of them
        ids = f'"correlationId" BETWEEN {known.min()} AND {known.max()}' if len(known) else "0"
        calls = read_calls(f"{launching} AND {ids}", None, rowids)
        others = "1"  # a launching call may lie outside the span
    else:  # launching calls of the whole table are about one per operation; every API call is far more
        calls = read_calls(launching, None if by_name else known, None)
        others = f'"nameId" NOT IN ({id_list}) OR "nameId" IS NULL' if by_name else ""
    rows = _match(calls, pid, corr, path)
    missing = (rows < 0) & (corr >= 0)  # an operation without a correlation id has no call to look for
    if others and missing.any():
        rest = read_calls(others, corr[missing], None)
        calls = pl.concat([calls, rest])
        rows = _match(calls, pid, corr, path)
    index = pl.Series(rows).replace(-1, None)  # a null index gathers null: no launching call
    return to_contract_ops(
        ops.with_columns(
            calls.select(
                pl.col("start").gather(index).alias("call_start"),
                pl.col("end").gather(index).alias("call_end"),
                pl.col("global_tid").gather(index),
            )
        )
    )


def _match(calls: pl.DataFrame, pid: np.ndarray, corr: np.ndarray, path: Path) -> np.ndarray:
    """For each operation, the row of its call in ``calls`` (-1: none), matched on packed process ids."""
    call_tid = calls["global_tid"].fill_null(-1).to_numpy()
    try:
        return match_calls(pid, corr, call_tid - call_tid % TID_BITS, calls["correlation_id"].to_numpy())
    except ValueError as err:
        raise TraceError(f"{path}: {err}: the export looks damaged; export the report again") from err


def to_contract_ops(ops: pl.DataFrame) -> pl.DataFrame:
    """Operations with packed ids (``global_pid``, the call's ``global_tid``) as the contract's (``pid``, ``tid``)."""
    return ops.select(
        *(c for c in OPS_SCHEMA if c in TABLE_OPS_SCHEMA and c != "pid"),
        _os_pid(pl.col("global_pid")).alias("pid"),
        "call_start",
        "call_end",
        (pl.col("global_tid") % TID_BITS).alias("tid"),
    ).select(list(OPS_SCHEMA))


def empty_ops() -> pl.DataFrame:
    """No operations, in the contract's schema."""
    return pl.DataFrame(schema=OPS_SCHEMA)
