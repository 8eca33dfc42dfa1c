"""Reading an nsys export too large to hold whole: time-ordered chunks of GPU operations.

A first pass has SQLite summarise blocks of rows (one aggregate row per few thousand
operations, :class:`_Blocks`), a few blocks are read to prove instants when no GPU runs anything
(:func:`_cuts`), and each chunk between two such instants is read by rowid range when the caller
gets to it, several at once on machines with cores to spare (:meth:`OpChunks.map`). The chunks
are the trace's operation batches (:class:`stagemfu.postprocess.trace.OpBatches`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl

from stagemfu.postprocess.concurrency import CHUNK_WORKERS, bounded_map
from stagemfu.postprocess.nsys.sqlite import (
    READ_THREADS,
    connect,
    damage_errors,
    fetch,
    integers,
    rowid_range,
    slices,
)
from stagemfu.postprocess.nsys.tables import (
    RUNTIME_TABLE,
    TABLE_OPS_SCHEMA,
    TID_BITS,
    name_id_sql,
    read_ops,
    with_calls,
)
from stagemfu.postprocess.trace import Progress

S = TypeVar("S")
R = TypeVar("R")
# Chunks handed to the workers ahead of the one whose result is awaited, per worker: results come
# in time order, so with one per worker a slow chunk would leave the others idle until it is done.
QUEUED_CHUNKS = 2
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
        As :func:`~stagemfu.postprocess.nsys.tables.with_calls` uses them to find launching calls.
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

    @property
    def held(self) -> None:
        """Chunks are read when mapped: no frame holds all operations."""
        return None

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
        """The operations of chunk ``k`` with their launching calls, in the contract's schema."""
        with damage_errors(self.path):
            return self._chunk(k)

    def _chunk(self, k: int) -> pl.DataFrame:
        window = [
            f'"start" >= {self.cuts[k - 1]}' if k > 0 else "1",
            f'"start" < {self.cuts[k]}' if k < len(self.cuts) else "1",
        ]
        frames = [
            read_ops(
                self.uri, self.path, table, cols, where=" AND ".join(window), rowids=tuple(self.op_rowids[table][k])
            )
            for table, cols in self.tables.items()
            if self.op_rowids[table][k][0] <= self.op_rowids[table][k][1]
        ]
        ops = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=TABLE_OPS_SCHEMA)
        rowids = self.calls.span(ops)
        return with_calls(self.uri, self.path, ops, self.runtime_columns, list(self.launcher_ids), rowids=rowids)


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
        rows = integers([s for s in summaries if s[1]], 5, path, f"{table}: start and end")
        first = rows[:, 0]
        return cls(first, first + block_rows - 1, *rows[:, 1:].T)

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
    export. A call outside the span found here is still found (:func:`~stagemfu.postprocess.nsys.tables.with_calls` then
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
        with connect(path) as db:
            found = [db.execute(sql, (at,)).fetchone() for at in range(lo, hi + 1, CALL_SAMPLE_ROWS)]
        rows = integers([f for f in found if f and f[1] is not None], 3, path, f"{RUNTIME_TABLE}: globalTid")
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


def plan_chunks(
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
    with connect(path) as db:
        ranges = {t: rowid_range(db, t) for t in (*tables, RUNTIME_TABLE)}
    held = sum(hi - lo + 1 for t, (lo, hi) in ranges.items() if t in tables and lo is not None)
    op_block_rows = max(min(BLOCK_ROWS, chunk_ops // BLOCKS_PER_CHUNK), -(-held // MAX_OP_BLOCKS), 1)
    with ThreadPoolExecutor(READ_THREADS) as pool:  # SQLite releases the GIL: the scans share every core
        pending_ops = {t: _summarise(pool, path, t, ranges[t], op_block_rows) for t in tables}
        pending_calls = pool.submit(_CallSamples.of, path, ranges[RUNTIME_TABLE])
        pending_names = [
            pool.submit(_distinct_names, path, t, name_id_sql(t, cols), piece)
            for t, cols in tables.items()
            for piece in slices(path, t, ranges[t] if ranges[t][0] is not None else (1, 0))
        ]
        blocks = {
            t: _Blocks.of([row for part in parts for row in part.result()], op_block_rows, path, t)
            for t, parts in pending_ops.items()
        }
        calls = pending_calls.result()
        name_ids = pl.Series(
            "name_id", integers([(n,) for part in pending_names for n in part.result()], 1, path, "name ids")[:, 0]
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
        with connect(path) as db:
            return [(a, *db.execute(sql, (a, a + block_rows)).fetchone()) for a in firsts.tolist()]

    firsts = np.arange(lo, hi + 1, block_rows, dtype=np.int64)
    return [pool.submit(scan, part) for part in np.array_split(firsts, min(READ_THREADS, len(firsts)))]


def _distinct_names(path: Path, table: str, name_sql: str, piece: str) -> list[int]:
    """The name ids of one rowid slice of an activity table (see :func:`.tables.name_id_sql`)."""
    with connect(path) as db:
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
    near_ops = fetch(uri, path, sql, schema={"s": pl.Int64, "e": pl.Int64}, what="GPU activity").sort("s")
    start, end = near_ops["s"].to_numpy(), near_ops["e"].to_numpy()
    reach = np.maximum.accumulate(np.concatenate([[a], end]))
    free = np.flatnonzero(start >= reach[:-1])
    cut = int(reach[free[0]] if len(free) else reach[-1])
    return cut if cut <= b else None


def _runs(first: np.ndarray, last: np.ndarray) -> list[tuple[int, int]]:
    """Rowid blocks (in rowid order) merged into maximal runs of adjacent blocks, as [lo, hi] pairs."""
    if not len(first):
        return []
    breaks = np.flatnonzero(first[1:] != last[:-1] + 1) + 1
    return [(int(first[i]), int(last[j - 1])) for i, j in zip(np.r_[0, breaks], np.r_[breaks, len(first)])]
