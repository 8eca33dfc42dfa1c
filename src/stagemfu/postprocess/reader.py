"""Read an Nsight Systems SQLite export into polars frames. The only module that touches SQLite.

Schemas differ across nsys versions (2022.1 to 2026.x): tables and columns are looked up by name,
optional ones are probed, and whatever is missing becomes a typed null column or an empty frame.
The file is opened read-only and immutable, so its bytes never change, even in a read-only
directory.

Bulk columns (kernels, runtime calls, NVTX events) come through the ADBC SQLite driver, which
hands Arrow columns to polars without building a Python object per row; the few small tables
(metadata, GPUs, strings of one kind) use the standard library's ``sqlite3``.

Exports too large to hold whole are read in time-ordered chunks (:class:`OpChunks`): a first
pass has SQLite summarise blocks of rows (one aggregate row per few thousand operations), a
few blocks are read to prove instants when no GPU runs anything, and each chunk between two
such instants is read by rowid range when the caller gets to it (several at once on machines
with cores to spare, :meth:`OpChunks.map`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import polars as pl

from stagemfu.errors import TraceError
from stagemfu.files import input_problem
from stagemfu.postprocess.concurrency import CHUNK_WORKERS, CPUS, bounded_map
from stagemfu.postprocess.launches import TID_BITS, match_calls, membership

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

SQLITE_MAGIC = b"SQLite format 3\x00"
FETCH_BATCH_ROWS = 1 << 18
# CUDA API functions that can launch GPU work: kernel launches, graph launches, copies, fills.
LAUNCHER_NAMES_SQL = """
    SELECT id FROM StringIds WHERE typeof(id) = 'integer' AND value LIKE 'cu%' AND
        (value LIKE '%Launch%' OR value LIKE '%Memcpy%' OR value LIKE '%Memset%')
"""
READ_THREADS = min(16, CPUS)
# Chunks handed to the workers ahead of the one whose result is awaited, per worker: results come
# in time order, so with one per worker a slow chunk would leave the others idle until it is done.
QUEUED_CHUNKS = 2
# Connections reading one chunk's span, when CHUNK_WORKERS chunks are read at once: each query
# costs a connection and a conversion under the GIL, so more slices than cores only add those.
CHUNK_READ_THREADS = max(1, READ_THREADS // CHUNK_WORKERS)
MIN_SLICE_ROWS = 1 << 16
# chunk_ops="auto": exports with more GPU operations than this are read in chunks of AUTO_CHUNK_OPS.
AUTO_IN_MEMORY_OPS = 2_000_000
# About a million operations in flight at most: chunks of 500 k where two are read and
# attributed at a time (2 to 7 cores), six of 166 k from 16 cores (docs/benchmarks.md).
AUTO_CHUNK_OPS = 1_000_000 // max(2, CHUNK_WORKERS)
BLOCK_ROWS = 4096  # rowids per block of the planning scan's summaries (at most)
CALL_SAMPLE_ROWS = 4096  # rowids between two samples of the runtime table's correlation ids
BLOCKS_PER_CHUNK = 16  # blocks of operations per chunk at least: the places a cut can be looked for
MAX_OP_BLOCKS = 1 << 16  # tiny chunks of a huge export get larger blocks, not an SQL query per operation
# Proving an instant clean may read up to this many chunks' rows (or blocks' rows, for tiny chunks).
PROBE_CHUNKS = 4
PROBE_BLOCKS = 64
# Progress callback: ``progress(what, done, total)`` as a long step advances (the CLI draws a bar).
Progress = Callable[[str, int, int], None]
S = TypeVar("S")
R = TypeVar("R")
READ_STEPS = ("NVTX ranges", "GPU operations", "launching calls")
CALLS_SCHEMA = {"start": pl.Int64, "end": pl.Int64, "global_tid": pl.Int64, "correlation_id": pl.Int64}

CALL_COLUMNS = {"call_start": pl.Int64, "call_end": pl.Int64, "global_tid": pl.Int64}
OP_KIND = {KERNEL_TABLE: "kernel", MEMCPY_TABLE: "memcpy", MEMSET_TABLE: "memset", GRAPH_TABLE: "graph"}
OP_KIND_TYPE = pl.Enum(list(OP_KIND.values()))
KERNEL_NAME_COLUMNS = ("demangledName", "shortName", "mangledName")
# Names of non-kernel operations get ids below zero, apart from StringIds' non-negative ids: memcpy
# kinds -1 - kind (kinds from 0 below MEMCPY_KINDS_MAX; others count as kind 0, "Unknown"), then
# kernels without a name, memsets, and CUDA graphs from GRAPH_NAME_ID down.
MEMCPY_KINDS_MAX = 98
UNNAMED = "[unnamed kernel]"
UNNAMED_NAME_ID = -99
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
    op_chunks
        When the trace was read in chunks (``read_trace(chunk_ops=...)``): the operations as
        time-ordered chunks, each a frame like ``ops``, read when iterated; ``ops`` is then empty.
    """

    path: Path
    nsys_version: str
    schema_version: str
    ranges: pl.DataFrame
    ops: pl.DataFrame
    names: pl.DataFrame
    gpus: pl.DataFrame
    notes: tuple[str, ...] = field(default=())
    op_chunks: OpChunks | None = None


@dataclass(frozen=True)
class OpChunks:
    """The GPU operations of an export in time-ordered chunks, read from SQLite one chunk at a time.

    The chunks are cut at instants when no operation runs on any GPU (``cuts``; chunk k holds the
    operations starting in [cuts[k-1], cuts[k])), so every interval union (busy time) of the
    whole trace is the sum of the chunks' unions: chunked results equal in-memory results. An
    operation's launching call is looked up per chunk, in the slice of the runtime table that
    holds the chunk's correlation ids, found from sampled ids (``calls``).

    Attributes
    ----------
    uri, path
        The export.
    tables
        Activity table -> its columns, for the tables holding operations.
    runtime_columns, launcher_ids
        As :func:`read_trace` uses them to find launching calls.
    cuts
        Cut times (ns) between chunks; ``len(cuts) + 1`` chunks.
    op_rowids
        Activity table -> (chunks, 2) array: the rowid span [lo, hi] of each chunk's operations
        (lo > hi when the chunk has none from that table).
    calls
        Correlation ids sampled across the runtime table, to find each chunk's span of it.
    progress
        Called as ``progress("FILE: chunk", k, chunks)`` as the k-th chunk is done.
    """

    uri: str
    path: Path
    tables: dict[str, set[str]]
    runtime_columns: set[str]
    launcher_ids: tuple[int, ...]
    cuts: np.ndarray
    op_rowids: dict[str, np.ndarray]
    calls: _CallSamples
    progress: Progress | None = None

    def __len__(self) -> int:
        return len(self.cuts) + 1

    def map(
        self,
        fn: Callable[[pl.DataFrame, S], R],
        before: Callable[[pl.DataFrame], S],
        workers: int = 1,
    ) -> Iterator[R]:
        """``fn(chunk, before(chunk))`` for every chunk; results in time order.

        ``workers`` chunks are read and processed at once, each by a thread of its own (SQLite,
        polars and numpy release the GIL): memory grows by a chunk per worker. More chunks wait in
        the pool's queue, unread, so the workers go on while a slow chunk finishes. ``before`` runs on
        the chunks one at a time in time order (a chunk waits for the one before it), for the
        little work that depends on what earlier chunks held.
        """
        turns = [threading.Event() for _ in range(len(self))]

        def one(k: int) -> R:
            try:
                frame = self.chunk(k)
                if k:
                    turns[k - 1].wait()
                state = before(frame)
            finally:
                turns[k].set()  # also on error: the next chunk must not wait forever
            return fn(frame, state)

        with ThreadPoolExecutor(workers) as pool:  # queued chunks wait unread: memory stays `workers` chunks deep
            for k, result in enumerate(bounded_map(pool, one, range(len(self)), QUEUED_CHUNKS * workers)):
                if self.progress:
                    self.progress(f"{self.path.name}: chunk", k + 1, len(self))
                yield result

    def chunk(self, k: int) -> pl.DataFrame:
        """The operations of chunk ``k`` with their launching calls, as ``Trace.ops``."""
        with _damage_errors(self.path):
            return self._chunk(k)

    def _chunk(self, k: int) -> pl.DataFrame:
        window = [
            f'"start" >= {self.cuts[k - 1]}' if k > 0 else "1",
            f'"start" < {self.cuts[k]}' if k < len(self.cuts) else "1",
        ]
        frames = [
            _read_ops(
                self.uri, self.path, table, cols, where=" AND ".join(window), rowids=tuple(self.op_rowids[table][k])
            )
            for table, cols in self.tables.items()
            if self.op_rowids[table][k][0] <= self.op_rowids[table][k][1]
        ]
        ops = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=OPS_SCHEMA)
        rowids = self.calls.span(ops)
        return _with_calls(self.uri, self.path, ops, self.runtime_columns, list(self.launcher_ids), rowids=rowids)


def read_trace(
    path: str | Path, *, chunk_ops: int | Literal["auto"] | None = None, progress: Progress | None = None
) -> Trace:
    """Read an nsys SQLite export read-only.

    Parameters
    ----------
    path
        An ``nsys export --type sqlite`` file.
    chunk_ops
        Read the GPU operations later, in time-ordered chunks of about this many operations
        (:class:`OpChunks`), so memory stays bounded however large the export; by default all
        are read now. Planning the chunks needs one scan of the activity tables, which SQLite
        summarises in blocks, and a sample of the runtime table.
        "auto": chunks of ``AUTO_CHUNK_OPS`` when the export holds more than
        ``AUTO_IN_MEMORY_OPS`` operations, else all at once. 0 is the same as None (all at
        once), as on the command line.
    progress
        Called as ``progress("reading FILE: STEP", done, total)`` before each of the bulk reads.

    Returns
    -------
    Trace
        Frames of NVTX ranges, GPU operations with their launching calls, and GPUs.

    Raises
    ------
    TraceError
        The file is missing, not SQLite, damaged, or lacks a table the numbers need; the message
        names the file and says what to do.
    ValueError
        ``chunk_ops`` is negative.
    """
    if chunk_ops == 0:
        chunk_ops = None
    elif chunk_ops != "auto" and chunk_ops is not None and chunk_ops < 0:
        raise ValueError(f"chunk_ops must be a positive number of operations, 0, None or 'auto', not {chunk_ops}")
    path = Path(path)
    _check_file(path)
    with _damage_errors(path):
        return _read(path, chunk_ops, progress)


def _read(path: Path, chunk_ops: int | Literal["auto"] | None, progress: Progress | None) -> Trace:
    """:func:`read_trace` of a file that looks like SQLite (the caller turns SQLite's errors into a TraceError)."""
    with _open(path) as db:
        tables = _tables(db)
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            raise TraceError(f"{path}: {REQUIRED_TABLES[missing[0]]}")
        op_tables = [t for t in GPU_OP_TABLES if t in tables]
        if not op_tables:
            raise TraceError(
                f"{path}: has no GPU activity (no kernel, memcpy, memset or CUDA graph table); "
                "profile with `nsys profile --trace=cuda,nvtx` and make sure the program uses the GPU"
            )
        columns = {t: _columns(db, t) for t in (*op_tables, RUNTIME_TABLE, "NVTX_EVENTS", "StringIds")}
        for table, cols in columns.items():
            _require_columns(path, table, cols)
        nsys_version, schema_version = _versions(db, tables)
        gpus = _gpus(db, tables)
        memcpy_names = _memcpy_names(db, tables)
        launcher_ids = [r[0] for r in db.execute(LAUNCHER_NAMES_SQL)]
        if chunk_ops == "auto":  # MAX(rowid) is one B-tree descent: an instant upper bound on the row count
            held = sum(db.execute(f'SELECT COALESCE(MAX(rowid), 0) FROM "{t}"').fetchone()[0] for t in op_tables)
            chunk_ops = AUTO_CHUNK_OPS if held > AUTO_IN_MEMORY_OPS else None
    uri = _uri(path)

    def step(done: int) -> None:
        if progress:
            progress(f"reading {path.name}: {READ_STEPS[done]}", done, len(READ_STEPS))

    with ThreadPoolExecutor(1) as pool:  # the NVTX ranges are read while the operations are
        step(0)
        pending_ranges = pool.submit(_read_ranges, uri, path, columns["NVTX_EVENTS"])
        notes = []
        if gpus.is_empty():
            notes.append("the trace has no TARGET_INFO_GPU table: GPU names and SM counts are unknown")
        if chunk_ops is not None:
            chunks, name_ids = _plan_chunks(
                uri, path, {t: columns[t] for t in op_tables}, columns[RUNTIME_TABLE], launcher_ids, chunk_ops, progress
            )
            names = _op_names(uri, path, name_ids, memcpy_names)
            notes.append(f"read in {len(chunks)} time-ordered chunk(s) of about {chunk_ops:,} GPU operations")
            ops = pl.DataFrame(schema={**OPS_SCHEMA, **CALL_COLUMNS})
            step(1)
            return Trace(
                path, nsys_version, schema_version, pending_ranges.result(), ops, names, gpus, tuple(notes), chunks
            )
        step(1)
        ops = pl.concat([_read_ops(uri, path, t, columns[t]) for t in op_tables], how="vertical")
        names = _op_names(uri, path, ops["name_id"], memcpy_names)
        step(2)
        ops = _with_calls(uri, path, ops, columns[RUNTIME_TABLE], launcher_ids)
        return Trace(path, nsys_version, schema_version, pending_ranges.result(), ops, names, gpus, tuple(notes))


def _check_file(path: Path) -> None:
    """Only a regular file that starts as SQLite does is read (a FIFO would block the reader forever)."""
    problem = input_problem(path)
    if problem == "is a directory":
        raise TraceError(f"{path}: is a directory; give the path of an nsys SQLite export")
    if problem is not None:
        raise TraceError(f"{path}: {problem}")
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
    """A read-only connection that ``with`` closes (sqlite3's own context manager only commits).

    Text that is not valid UTF-8 (a damaged page, or a program that named a range with raw
    bytes) is read with replacement characters rather than failing the whole read.
    """
    db = sqlite3.connect(_uri(path), uri=True)
    db.text_factory = lambda raw: raw.decode("utf-8", "replace")
    return contextlib.closing(db)


@contextlib.contextmanager
def _damage_errors(path: Path) -> Iterator[None]:
    """Turn an SQLite error (a damaged page met anywhere in a read) into one TraceError naming the file."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError) as err:  # SQLite's message may quote damaged bytes
        detail = (str(err).splitlines() or [type(err).__name__])[0]
        raise TraceError(f"{path}: is damaged or unreadable ({detail}); export the report again") from err


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The table's column names, lower-cased (SQLite matches names without regard to case)."""
    return {str(r[1]).lower() for r in db.execute(f'PRAGMA table_info("{table}")')}


def _has(columns: set[str], name: str) -> bool:
    return name.lower() in columns


def _require_columns(path: Path, table: str, columns: set[str]) -> None:
    """Refuse a table that lacks a column the numbers need (SQLite would read a missing "end" as a string)."""
    missing = [c for c in REQUIRED_COLUMNS.get(table, ()) if not _has(columns, c)]
    if missing:
        raise TraceError(
            f"{path}: table {table} has no column {missing[0]!r}; this is not an nsys export stagemfu can read "
            "(damaged, or an unknown schema): export the report again with `nsys export --type sqlite`"
        )


def _versions(db: sqlite3.Connection, tables: set[str]) -> tuple[str, str]:
    # 2022.x exports name the metadata table EXPORT_META_DATA; later ones META_DATA_EXPORT.
    table = next((t for t in ("META_DATA_EXPORT", "EXPORT_META_DATA") if t in tables), None)
    if table is None or not {"name", "value"} <= _columns(db, table):
        return "unknown", "unknown"
    meta = dict(db.execute(f'SELECT CAST("name" AS TEXT), CAST("value" AS TEXT) FROM "{table}"').fetchall())
    return (
        str(meta.get("EXPORT_PRODUCT_VERSION") or "unknown"),
        str(meta.get("EXPORT_SCHEMA_VERSION") or "unknown"),
    )


def _gpus(db: sqlite3.Connection, tables: set[str]) -> pl.DataFrame:
    schema = {"id": pl.Int64, "name": pl.Utf8, "sms": pl.Int64, "clock_hz": pl.Int64}
    if "TARGET_INFO_GPU" not in tables:
        return pl.DataFrame(schema=schema)
    cols = _columns(db, "TARGET_INFO_GPU")

    def integer(column: str) -> str:  # a number of the wrong type reads as unknown
        return f"""CASE WHEN typeof("{column}") = 'integer' THEN "{column}" END""" if _has(cols, column) else "NULL"

    pick = {
        "id": integer("id"),
        "name": 'CAST("name" AS TEXT)' if _has(cols, "name") else "NULL",
        "sms": integer("smCount"),
        "clock_hz": integer("clockRate"),
    }
    sql = ", ".join(f"{expr} AS {alias}" for alias, expr in pick.items())
    rows = db.execute(f"SELECT DISTINCT {sql} FROM TARGET_INFO_GPU ORDER BY 1").fetchall()
    return pl.DataFrame(rows, schema=schema, orient="row")


def _memcpy_names(db: sqlite3.Connection, tables: set[str]) -> dict[int, str]:
    names = dict(MEMCPY_KINDS)
    if "ENUM_CUDA_MEMCPY_OPER" in tables and {"id", "label"} <= _columns(db, "ENUM_CUDA_MEMCPY_OPER"):
        names.update(
            db.execute(
                'SELECT "id", CAST("label" AS TEXT) FROM ENUM_CUDA_MEMCPY_OPER '
                """WHERE typeof("id") = 'integer' AND "label" IS NOT NULL"""
            ).fetchall()
        )
    return names


def _q(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def _col(columns: set[str], name: str, alias: str | None = None, default: str = "NULL") -> str:
    return f"{_q(name) if _has(columns, name) else default} AS {alias or name}"


def _read_ranges(uri: str, path: Path, cols: set[str]) -> pl.DataFrame:
    """NVTX range events with their domain and text resolved.

    Text is inline (``text``) or registered (``textId`` into StringIds). Domains are named by
    their eventType-75 row, matched on domainId within the same process, as nsys does.
    """
    types = ", ".join(str(t) for t in (*RANGE_EVENT_TYPES, NVTX_DOMAIN_CREATE))
    events = f"""
        SELECT rowid AS rid, "start" AS start, "end" AS "end", "eventType" AS eventType, {_col(cols, "text")},
               "globalTid" AS globalTid, {_col(cols, "textId")}, {_col(cols, "domainId", default="0")},
               {_col(cols, "endGlobalTid")}
        FROM NVTX_EVENTS WHERE "eventType" IN ({types})
    """
    # Texts come as bytes (decoded by _fetch, with replacement characters where they are not UTF-8).
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


def _read_ops(
    uri: str, path: Path, table: str, cols: set[str], *, where: str = "1", rowids: tuple[int, int] | None = None
) -> pl.DataFrame:
    """GPU operations of one activity table, named by ``name_id`` (see :func:`_op_names`)."""
    base = ", ".join(
        [
            '"start" AS start',
            '"end" AS "end"',
            _col(cols, "deviceId", "device"),
            _col(cols, "streamId", "stream"),
            '"correlationId" AS correlation_id',
            _col(cols, "globalPid", "global_pid"),
        ]
    )
    kind, name_id = OP_KIND[table], _name_id_sql(table, cols)
    schema = {c: t for c, t in OPS_SCHEMA.items() if c != "kind"}
    frame = _fetch_rows(
        uri, path, table, f"{base}, {name_id} AS name_id", schema=schema, where=where, rowids=rowids, what=table
    )
    return frame.with_columns(kind=pl.lit(kind, OP_KIND_TYPE)).select(list(OPS_SCHEMA))


def _name_id_sql(table: str, cols: set[str]) -> str:
    """Kernels are named by their StringIds id; other operations by negative ids of their own.

    Values outside their range (a damaged export) fall back to the kind's default, so that no two
    kinds of operation ever share an id.
    """

    def within(column: str, low: int, high: int, default: int) -> str:
        if not _has(cols, column):
            return str(default)
        return f"CASE WHEN {_q(column)} BETWEEN {low} AND {high} THEN {_q(column)} ELSE {default} END"

    if table == KERNEL_TABLE:
        name = next((c for c in KERNEL_NAME_COLUMNS if _has(cols, c)), None)
        return within(name, 0, np.iinfo(np.int64).max, UNNAMED_NAME_ID) if name else str(UNNAMED_NAME_ID)
    if table == MEMCPY_TABLE:
        return f"-1 - {within('copyKind', 0, MEMCPY_KINDS_MAX - 1, 0)}"
    if table == MEMSET_TABLE:
        return str(MEMSET_NAME_ID)
    return f"{GRAPH_NAME_ID} - {within('graphId', 0, np.iinfo(np.int64).max + GRAPH_NAME_ID, 0)}"


def _op_names(uri: str, path: Path, name_ids: pl.Series, memcpy_names: dict[int, str]) -> pl.DataFrame:
    """``name_id`` → ``name`` for the operations' name ids; strings are loaded once, not per row."""
    frames = []
    kernel_ids = name_ids.filter(name_ids >= 0).unique().sort()
    if len(kernel_ids):  # the ids are known already: asking SQLite for them again would scan the kernels
        frames.append(
            _fetch(
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
    synthetic = {-1 - k: f"[CUDA memcpy {v}]" for k, v in memcpy_names.items() if 0 <= k < MEMCPY_KINDS_MAX}
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


def _fetch_rows(
    uri: str,
    path: Path,
    table: str,
    columns: str,
    *,
    schema: dict[str, pl.DataType],
    where: str = "1",
    keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    rowids: tuple[int, int] | None = None,
    what: str = "",
) -> pl.DataFrame:
    """``SELECT columns FROM table WHERE where``, read as rowid slices by parallel connections.

    ``rowids`` limits the read to rows whose rowid lies in [lo, hi] (a B-tree range: only those
    rows are visited): one chunk's span, read by its share of the connections
    (``CHUNK_READ_THREADS``) while other chunks are read too; a whole table gets them all.

    SQLite serves concurrent readers of an immutable file independently and the driver releases
    the GIL while it reads, so the big activity tables load on several cores.
    """
    queries = [
        f'SELECT {columns} FROM "{table}" WHERE {piece} AND ({where})'
        for piece in _slices(path, table, rowids, READ_THREADS if rowids is None else CHUNK_READ_THREADS)
    ]
    if not queries:
        return pl.DataFrame(schema=schema)
    with ThreadPoolExecutor(len(queries)) as pool:
        frames = list(pool.map(lambda sql: _fetch(uri, path, sql, schema=schema, keep=keep, what=table), queries))
    return pl.concat(frames)


def _slices(path: Path, table: str, rowids: tuple[int, int] | None = None, threads: int = READ_THREADS) -> list[str]:
    """Conditions splitting ``table`` (or its rowids in [lo, hi]) into rowid slices, one per reading thread."""
    if rowids is None:
        with _open(path) as db:
            lo, hi = _rowid_range(db, table)
    else:
        lo, hi = rowids if rowids[0] <= rowids[1] else (None, None)
    if lo is None:
        return []
    parts = max(1, min(threads, (hi - lo + 1) // MIN_SLICE_ROWS))
    edges = np.linspace(lo, hi + 1, parts + 1).astype(np.int64)
    return [f"rowid >= {a} AND rowid < {b}" for a, b in zip(edges[:-1], edges[1:])]


def _rowid_range(db: sqlite3.Connection, table: str) -> tuple[int | None, int | None]:
    """The smallest and largest rowid of ``table``: two B-tree descents.

    Asked together in one statement, SQLite would scan the whole table for them (its min/max
    shortcut takes a single aggregate only): seconds on a runtime table of tens of millions of rows.
    """
    lo = db.execute(f'SELECT MIN(rowid) FROM "{table}"').fetchone()[0]
    hi = db.execute(f'SELECT MAX(rowid) FROM "{table}"').fetchone()[0]
    return lo, hi


def _with_calls(
    uri: str,
    path: Path,
    ops: pl.DataFrame,
    runtime_cols: set[str],
    launcher_ids: list[int],
    *,
    rowids: tuple[int, int] | None = None,
) -> pl.DataFrame:
    """Add to each operation the CUDA API call that launched it (same process, same correlation id).

    Most API calls launch nothing (queries, synchronisation, allocation), and the runtime table is
    the largest in an export. So SQLite first returns only calls of launching APIs (by name) whose
    correlation id some operation carries; only if an operation is left without its call are the
    remaining API calls searched for it. Either way the result is exact. ``rowids`` limits the
    first search to that span of the runtime table and to the operations' range of correlation
    ids (see :class:`OpChunks`); the second always reads the whole table, for any call.
    """
    columns = '"start" AS start, "end" AS "end", "globalTid" AS global_tid, "correlationId" AS correlation_id'
    corr, pid = ops["correlation_id"].fill_null(-1).to_numpy(), ops["global_pid"].fill_null(-1).to_numpy()

    def read_calls(where: str, wanted: np.ndarray | None, rowids: tuple[int, int] | None) -> pl.DataFrame:
        test = membership(wanted) if wanted is not None else None
        return _fetch_rows(
            uri,
            path,
            RUNTIME_TABLE,
            columns,
            schema=CALLS_SCHEMA,
            where=where,
            keep=(lambda b: b.filter(test(b["correlation_id"].fill_null(-1).to_numpy()))) if test else None,
            rowids=rowids,
        )

    by_name = _has(runtime_cols, "nameId") and launcher_ids
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


def _fetch(
    uri: str,
    path: Path,
    sql: str,
    schema: dict[str, pl.DataType],
    keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    what: str = "",
) -> pl.DataFrame:
    """Run one query through ADBC and return the result as a polars frame of ``schema``.

    ADBC infers a column's type from its first rows, so every text column in our queries is
    COALESCEd to a string (or read as bytes, see :func:`_text`); integer columns that start with
    NULLs come back as Int64, and a column holding values of several types comes back as text or
    bytes, which is refused here (``what`` names the table in the message). ``keep`` filters each
    record batch as it arrives, so a read of a whole table holds only what it keeps.
    """
    if keep is None:
        frame = _query(uri, path, sql)
    else:
        parts = [keep(_checked(batch, schema, path, what)) for batch in _batches(uri, path, sql)]
        frame = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    if frame.width == 0:  # no column: a result of no rows
        frame = pl.DataFrame(schema=schema)
    frame = _checked(frame, schema, path, what)
    # Narrow ids (device, stream) out of their type's range are damage: read as unknown (null).
    return frame.select(
        [(_text(frame[c]) if t == pl.Utf8 else frame[c]).cast(t, strict=False) for c, t in schema.items()]
    )


def _checked(frame: pl.DataFrame, schema: dict[str, pl.DataType], path: Path, what: str) -> pl.DataFrame:
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


def _text(column: pl.Series) -> pl.Series:
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


def _query(uri: str, path: Path, sql: str) -> pl.DataFrame:
    """The whole result of one query, handed by the ADBC driver to polars as an Arrow C stream.

    The driver manager's own statement API needs no pyarrow: neither its import nor a Python
    object per record batch, both paid under the GIL while other chunks wait for it.
    """
    import adbc_driver_manager  # deferred: import cost only when a trace is read
    import adbc_driver_sqlite

    with _read_errors(path), contextlib.ExitStack() as stack:
        db = stack.enter_context(contextlib.closing(adbc_driver_sqlite.connect(uri)))
        conn = stack.enter_context(contextlib.closing(adbc_driver_manager.AdbcConnection(db)))
        stmt = stack.enter_context(contextlib.closing(adbc_driver_manager.AdbcStatement(conn)))
        stmt.set_options(**{"adbc.sqlite.query.batch_rows": str(FETCH_BATCH_ROWS)})
        stmt.set_sql_query(sql)
        stream, _ = stmt.execute_query()
        return pl.DataFrame(stream)


def _batches(uri: str, path: Path, sql: str) -> Iterator[pl.DataFrame]:
    """The result of one query through ADBC's DB-API, as polars frames of up to ``FETCH_BATCH_ROWS`` rows."""
    import adbc_driver_sqlite.dbapi as adbc  # deferred: imports pyarrow, needed only here

    with _read_errors(path), adbc.connect(uri) as conn, conn.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(FETCH_BATCH_ROWS)})
        cur.execute(sql)
        for batch in cur.fetch_record_batch():
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Turn the driver's errors into one TraceError that names the file."""
    try:
        yield
    except TraceError:
        raise
    except Exception as err:  # the driver raises its own error classes and OSError for data errors
        raise TraceError(f"{path}: could not be read ({str(err).splitlines()[0]}); export the report again") from err


@dataclass(frozen=True)
class _Blocks:
    """Summaries of consecutive rowid blocks of one activity table, one aggregate row per block.

    SQLite reads every row of the table but hands back a row per block, so the planning scan
    costs what SQLite's own row decoding costs, nothing per row in Python. Empty blocks (rowids
    never used) are left out.

    Attributes
    ----------
    first, last
        The block's first and last rowid.
    rows
        Operations in the block.
    low, high
        The first and last start in the block.
    reach
        The latest end in the block.
    """

    first: np.ndarray
    last: np.ndarray
    rows: np.ndarray
    low: np.ndarray
    high: np.ndarray
    reach: np.ndarray

    @classmethod
    def of(cls, summaries: list[tuple[int, ...]], block_rows: int, path: Path, table: str) -> _Blocks:
        """From (first rowid, rows, low, high, reach) rows; empty blocks dropped."""
        table = _integers([s for s in summaries if s[1]], 5, path, f"{table}: start and end")
        first = table[:, 0]
        return cls(first, first + block_rows - 1, *table[:, 1:].T)

    def span(self, keep: np.ndarray) -> tuple[int, int]:
        """The rowid span [lo, hi] of the kept blocks; (1, 0), an empty span, when none is kept."""
        if not keep.any():
            return 1, 0
        return int(self.first[keep].min()), int(self.last[keep].max())


@dataclass(frozen=True)
class _CallSamples:
    """The runtime table's (process, correlation id) at every ``CALL_SAMPLE_ROWS`` rowids: where a
    chunk's launching calls lie.

    nsys writes API calls in time order, and a process numbers its calls in time order, so the
    calls of a range of one process's ids lie between that process's samples around the range.
    A point read per sample (one B-tree descent) replaces a scan of the largest table of an
    export. A call outside the span found here is still found (:func:`_with_calls` then
    searches the whole table), only slower.
    """

    rowid: np.ndarray
    pid: np.ndarray
    corr: np.ndarray
    first: int
    last: int

    @classmethod
    def of(cls, path: Path, rowids: tuple[int | None, int | None]) -> _CallSamples:
        """Sample the runtime table whose rowids span ``rowids``: the first call with an id at or after each stride."""
        lo, hi = rowids
        if lo is None or hi is None:
            return cls(*(np.zeros(0, dtype=np.int64),) * 3, 1, 0)
        sql = (
            f'SELECT rowid, "globalTid", "correlationId" FROM {RUNTIME_TABLE} '
            'WHERE rowid >= ? AND "correlationId" >= 0 LIMIT 1'
        )
        with _open(path) as db:
            found = [db.execute(sql, (at,)).fetchone() for at in range(lo, hi + 1, CALL_SAMPLE_ROWS)]
        rows = _integers([f for f in found if f and f[1] is not None], 3, path, f"{RUNTIME_TABLE}: globalTid")
        return cls(rows[:, 0], rows[:, 1] - rows[:, 1] % TID_BITS, rows[:, 2], lo, hi)

    def span(self, ops: pl.DataFrame) -> tuple[int, int]:
        """A rowid span [lo, hi] holding the launching calls of ``ops``: per process, from its sample
        before the first one that reaches the process's smallest id to its sample after the last
        one not past its largest id (the whole table for a process never sampled)."""
        ids = ops.filter(pl.col("correlation_id").is_not_null())
        if ids.is_empty():
            return 1, 0
        lo, hi = self.last, self.first
        per_process = ids.group_by("global_pid").agg(
            pl.col("correlation_id").min().alias("first"), pl.col("correlation_id").max().alias("last")
        )
        for pid, first, last in per_process.iter_rows():  # processes: a handful
            mine = np.flatnonzero(self.pid == pid) if pid is not None else np.zeros(0, dtype=np.int64)
            reach, within = np.flatnonzero(self.corr[mine] >= first), np.flatnonzero(self.corr[mine] <= last)
            k = reach[0] if len(reach) else len(mine)  # its first sample at or past `first`
            j = within[-1] if len(within) else -1  # its last sample not past `last`
            lo = min(lo, int(self.rowid[mine[k - 1]]) if k > 0 else self.first)
            hi = max(hi, int(self.rowid[mine[j + 1]]) if j + 1 < len(mine) else self.last)
        return lo, hi


def _plan_chunks(
    uri: str,
    path: Path,
    tables: dict[str, set[str]],
    runtime_cols: set[str],
    launcher_ids: list[int],
    chunk_ops: int,
    progress: Progress | None,
) -> tuple[OpChunks, pl.Series]:
    """Choose time-ordered chunks of about ``chunk_ops`` operations, cut where no operation runs.

    One parallel pass summarises the rowid blocks of each activity table (first start, last
    start, last end), samples the runtime table's correlation ids and collects the operations'
    name ids. A chunk closes at the first instant, after it holds ``chunk_ops``
    operations, that :func:`_clean_instant` proves no operation straddles, so a trace whose GPUs
    never all rest gets fewer, larger chunks, never a wrong number.
    """
    with _open(path) as db:
        ranges = {t: _rowid_range(db, t) for t in (*tables, RUNTIME_TABLE)}
    held = sum(hi - lo + 1 for t, (lo, hi) in ranges.items() if t in tables and lo is not None)
    op_block_rows = max(min(BLOCK_ROWS, chunk_ops // BLOCKS_PER_CHUNK), -(-held // MAX_OP_BLOCKS), 1)
    with ThreadPoolExecutor(READ_THREADS) as pool:  # SQLite releases the GIL: the scans share every core
        pending_ops = {t: _summarise(pool, path, t, ranges[t], op_block_rows) for t in tables}
        pending_calls = pool.submit(_CallSamples.of, path, ranges[RUNTIME_TABLE])
        pending_names = [
            pool.submit(_distinct_names, path, t, _name_id_sql(t, cols), piece)
            for t, cols in tables.items()
            for piece in _slices(path, t, ranges[t] if ranges[t][0] is not None else (1, 0))
        ]
        blocks = {
            t: _Blocks.of([row for part in parts for row in part.result()], op_block_rows, path, t)
            for t, parts in pending_ops.items()
        }
        calls = pending_calls.result()
        name_ids = pl.Series(
            "name_id", _integers([(n,) for part in pending_names for n in part.result()], 1, path, "name ids")[:, 0]
        ).unique()
    cuts = _cuts(uri, path, blocks, chunk_ops, max(PROBE_CHUNKS * chunk_ops, PROBE_BLOCKS * op_block_rows))
    starts = np.concatenate([[np.iinfo(np.int64).min], cuts])
    stops = np.concatenate([cuts, [np.iinfo(np.int64).max]])
    op_rowids = {
        t: np.array([b.span((b.high >= lo) & (b.low < hi)) for lo, hi in zip(starts, stops)], dtype=np.int64)
        for t, b in blocks.items()
    }
    chunks = OpChunks(uri, path, tables, runtime_cols, tuple(launcher_ids), cuts, op_rowids, calls, progress)
    return chunks, name_ids


def _summarise(
    pool: ThreadPoolExecutor,
    path: Path,
    table: str,
    rowids: tuple[int | None, int | None],
    block_rows: int,
) -> list[Future[list[tuple[int, ...]]]]:
    """Start the block summaries of ``table``: (first rowid, operations, first start, last start,
    last end) for every ``block_rows`` rowids, a share of the blocks per thread."""
    lo, hi = rowids
    if lo is None or hi is None:
        return []
    sql = (
        f'SELECT COUNT("start"), MIN("start"), MAX("start"), MAX(COALESCE("end", "start")) FROM "{table}" '
        "WHERE rowid >= ? AND rowid < ?"
    )

    def scan(firsts: np.ndarray) -> list[tuple[int, ...]]:
        with _open(path) as db:
            return [(a, *db.execute(sql, (a, a + block_rows)).fetchone()) for a in firsts.tolist()]

    firsts = np.arange(lo, hi + 1, block_rows, dtype=np.int64)
    return [pool.submit(scan, part) for part in np.array_split(firsts, min(READ_THREADS, len(firsts)))]


def _distinct_names(path: Path, table: str, name_sql: str, piece: str) -> list[int]:
    """The name ids of one rowid slice of an activity table (kernels: StringIds ids; see :func:`_name_id_sql`)."""
    with _open(path) as db:
        return [
            r[0] for r in db.execute(f'SELECT DISTINCT {name_sql} FROM "{table}" WHERE {piece}') if r[0] is not None
        ]


def _cuts(uri: str, path: Path, blocks: dict[str, _Blocks], chunk_ops: int, probe_rows: int) -> np.ndarray:
    """Cut times: each time ``chunk_ops`` more operations have started, the first clean instant found
    in the stretch of starts of the block reaching that count or of the blocks after it.

    Blocks are taken in order of their first start (nsys writes activity nearly in time order, so
    a block covers a short stretch of time); each count's search runs on a thread of its own, up
    to the block where the next count's search begins. Where proving an instant clean would read
    more than ``probe_rows`` rows (a table far from time order), no cut is looked for.
    """
    low = np.concatenate([b.low for b in blocks.values()])
    high = np.concatenate([b.high for b in blocks.values()])
    order = np.argsort(low, kind="stable")
    held = np.cumsum(np.concatenate([b.rows for b in blocks.values()])[order])
    if not len(held):
        return np.zeros(0, dtype=np.int64)
    floor = int(low.min()) + 1  # a cut at the very first start would leave an empty chunk
    turns = np.flatnonzero(np.diff(held // chunk_ops, prepend=0) > 0)
    ends = np.append(turns[1:], len(order))

    def search(first: int, stop: int) -> int | None:
        for k in range(first, stop):
            a, b = max(int(low[order[k]]), floor), int(high[order[k]])
            cut = _clean_instant(uri, path, blocks, a, b, probe_rows) if a <= b else None
            if cut is not None:
                return cut
        return None

    with ThreadPoolExecutor(max(1, min(READ_THREADS, len(turns)))) as pool:
        found = [c for c in pool.map(search, turns.tolist(), ends.tolist()) if c is not None]
    return np.unique(np.array(found, dtype=np.int64))


def _clean_instant(uri: str, path: Path, blocks: dict[str, _Blocks], a: int, b: int, probe_rows: int) -> int | None:
    """The first instant in [a, b] that no operation straddles (starts before and ends after), or None.

    Only operations that start before ``b`` and end after ``a`` can straddle an instant of
    [a, b]; the blocks' summaries say which blocks may hold one, and SQLite returns those
    operations. Sorted by start, with ``reach`` the latest end so far (at least ``a``), the first
    operation that starts at or after ``reach`` marks a clean instant: ``reach`` itself.
    """
    reads = []
    for table, blk in blocks.items():
        near = (blk.low < b) & (blk.reach > a)
        reads.extend((table, lo, hi) for lo, hi in _runs(blk.first[near], blk.last[near]))
    if sum(hi - lo + 1 for _, lo, hi in reads) > probe_rows:
        return None
    if not reads:
        return a
    sql = " UNION ALL ".join(
        f'SELECT "start" AS s, COALESCE("end", "start") AS e FROM "{table}" '
        f'WHERE rowid BETWEEN {lo} AND {hi} AND "start" < {b} AND COALESCE("end", "start") > {a}'
        for table, lo, hi in reads
    )
    near_ops = _fetch(uri, path, sql, schema={"s": pl.Int64, "e": pl.Int64}, what="GPU activity").sort("s")
    start, end = near_ops["s"].to_numpy(), near_ops["e"].to_numpy()
    reach = np.maximum.accumulate(np.concatenate([[a], end]))
    free = np.flatnonzero(start >= reach[:-1])
    cut = int(reach[free[0]] if len(free) else reach[-1])
    return cut if cut <= b else None


def _integers(rows: list[tuple], width: int, path: Path, what: str) -> np.ndarray:
    """Rows of integers from SQLite as an (n, width) array; a value of another type means a damaged export."""
    if any(type(v) is not int for row in rows for v in row):
        raise TraceError(f"{path}: {what} hold values that are not integers; the export is damaged: export it again")
    return np.array(rows, dtype=np.int64).reshape(-1, width)


def _runs(first: np.ndarray, last: np.ndarray) -> list[tuple[int, int]]:
    """Rowid blocks (in rowid order) merged into maximal runs of adjacent blocks, as [lo, hi] pairs."""
    if not len(first):
        return []
    breaks = np.flatnonzero(first[1:] != last[:-1] + 1) + 1
    return [(int(first[i]), int(last[j - 1])) for i, j in zip(np.r_[0, breaks], np.r_[breaks, len(first)])]
