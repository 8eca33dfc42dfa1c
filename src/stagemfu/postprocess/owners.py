"""Which range instances own each GPU operation, under each launch rule.

An operation belongs to a range when the CPU call that launched it lies inside the range on the
same thread (nsys's rule, "thread"), and to every range enclosing that one. With the "process"
rule, an operation launched by another thread than its process's main thread (PyTorch runs
backward on its autograd thread) also enters as a copy launched by the main thread, so the
ranges open there own it too; a range lies on one thread, so it meets the operation or its copy,
never both.

The operations are put in launch order once (:class:`LaunchOrder`: per thread, by call start),
so the operations of one range are a contiguous slice of that order, and (range, operation)
pairs come from :func:`owner_pairs` in bounded chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS, containment_pairs, segment_bounds
from stagemfu.postprocess.launches import CORRELATION_LIMIT
from stagemfu.postprocess.metrics import REDUCED_SCHEMA, Segments, reduce_segments
from stagemfu.postprocess.threads import ThreadIndex
from stagemfu.postprocess.trace import KERNEL_KINDS

# Which ranges an operation belongs to: those open on the launching thread (nsys's rule, the
# default), or also those open on the process's main thread.
LAUNCH_RULES = ("thread", "process")
# A range is flagged when other threads made at least 1/OTHER_THREAD_SHARE of the launches seen
# while it was open (its own thread made the rest).
OTHER_THREAD_SHARE = 10
NAME_KINDS = 8  # a (name_id, kind) pair is keyed name_id * NAME_KINDS + kind (kind: OP_KIND_TYPE's index)


def owner_pairs(
    ranges: pl.DataFrame, ops: LaunchOrder, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(range row, operation in launch order) pairs: the call lies inside the range on its thread.

    In chunks of about ``chunk_rows`` pairs, each range's pairs together and in launch order.
    """
    return containment_pairs(
        ranges["thread"].to_numpy(),
        ranges["start_ns"].to_numpy(),
        ranges["end_ns"].to_numpy(),
        ops.thread,
        ops.call_start,
        ops.call_end,
        chunk_rows=chunk_rows,
    )


_NO_OTHER_THREADS = pl.DataFrame(schema={"rid": pl.Int64, "other_thread_ops": pl.Int64})


def innermost_by_row(height: int, order: np.ndarray, innermost: np.ndarray, source: np.ndarray | None) -> np.ndarray:
    """The innermost range of each operation in frame order (-1: none): a range on its own
    thread first, else one on its process's main thread (where its copy was attributed)."""
    by_row = np.full(height, -1, dtype=np.int64)
    if source is None:
        by_row[order] = innermost
        return by_row
    own = order < height
    by_row[order[own]] = innermost[own]
    copied, copy_innermost = source[order[~own]], innermost[~own]
    fill = by_row[copied] < 0
    by_row[copied[fill]] = copy_innermost[fill]
    return by_row


def with_main_thread_copies(frame: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray | None]:
    """The operations, then a copy of each one launched off its process's main thread, relaunched
    there; and for every row, the row of the original (None when there is nothing to copy).

    A process's main thread has the process's id (see :class:`stagemfu.postprocess.trace.Trace`).
    """
    others = frame.with_row_index("source").filter(pl.col("tid").is_not_null() & (pl.col("tid") != pl.col("pid")))
    if others.is_empty():
        return frame, None
    copies = others.with_columns(tid=pl.col("pid"))
    source = np.concatenate([np.arange(frame.height), others["source"].cast(pl.Int64).to_numpy()])
    return pl.concat([frame, copies.drop("source")]), source


def other_thread_launches(ranges: pl.DataFrame, ops: LaunchOrder, outside: np.ndarray) -> pl.DataFrame:
    """Per range instance: launches made outside every range by other threads of its process while it was open.

    NVTX ranges belong to a thread, so work that a framework hands to a worker thread (PyTorch's
    autograd runs backward on one thread per device) is attributed to no range, here as in
    nsys. Counting those launches lets the report say so instead of showing an idle stage.
    """
    launch = outside & ops.new_call
    if not launch.any():
        return _NO_OTHER_THREADS
    process, at = ops.pid[launch], ops.call_start[launch]
    start, end = ranges["start_ns"].to_numpy(), ranges["end_ns"].to_numpy()
    near = np.flatnonzero((start <= at.max()) & (end > at.min()))  # a chunk's launches span a short time
    start, end = start[near], end[near]
    range_process = ranges["pid"].to_numpy()[near]
    counts = np.zeros(len(near), dtype=np.int64)
    for p in np.unique(process):  # processes: a handful
        times = np.sort(at[process == p])
        mine = range_process == p
        counts[mine] = np.searchsorted(times, end[mine]) - np.searchsorted(times, start[mine])
    hit = counts > 0
    return pl.DataFrame(
        {"rid": ranges["rid"].to_numpy()[near[hit]], "other_thread_ops": counts[hit]},
        schema={"rid": pl.Int64, "other_thread_ops": pl.Int64},
    )


def other_thread_notes(instances: pl.DataFrame, other: pl.DataFrame) -> list[str]:
    """One note naming the ranges that miss a tenth or more of the launches their process made while they were open."""
    flagged = (
        instances.join(other, on="rid", how="inner")
        .group_by("domain", "name")
        .agg(pl.col("gpu_ops").sum(), pl.col("other_thread_ops").sum())
        .filter(pl.col("other_thread_ops") * OTHER_THREAD_SHARE >= pl.col("gpu_ops") + pl.col("other_thread_ops"))
        .sort("domain", "name")
    )
    if flagged.is_empty():
        return []
    listed = "; ".join(
        f"{domain}:{name} {other_ops:,} (its own thread: {own:,})"
        for domain, name, own, other_ops in flagged.select("domain", "name", "gpu_ops", "other_thread_ops").iter_rows()
    )
    return [
        "GPU work launched by other threads of the same process while a range was open is attributed to no "
        "range: NVTX ranges belong to one thread, as in nsys (PyTorch, for one, runs backward on its autograd "
        "threads; `--launches process` gives that work to the ranges open on the process's main thread). "
        f"Launches from other threads during: {listed}"
    ]


class SeenLaunches:
    """The launches (process, correlation id) met in earlier batches: a packed bitset per process."""

    def __init__(self, batches: int) -> None:
        self.bits: dict[int, np.ndarray] = {}
        self.remember = batches > 1  # a single batch has no later one to tell

    def fresh(self, ops: pl.DataFrame) -> np.ndarray:
        """True for each operation whose launch no earlier call of this method has seen; then marks them seen.

        This runs on the batches one at a time, so it is kept cheap: a batch's correlation ids lie
        in a narrow window, and that window's bits are set at once from a packed boolean mask.
        """
        out = np.ones(ops.height, dtype=bool)
        if not self.remember or not ops.height:
            return out
        pid = ops["pid"].fill_null(-1).to_numpy()
        slot = ops["correlation_id"].fill_null(-1).to_numpy() + 1  # a null id (-1) gets slot 0
        one_process = pid.min() == pid.max()
        for p in pid[:1] if one_process else dense_rank(pid)[0]:  # processes: a handful
            mine = slice(None) if one_process else pid == p
            mine_slots = slot[mine]
            lo, hi = int(mine_slots.min()) >> 3, int(mine_slots.max()) >> 3
            bits = self.bits.get(int(p), np.zeros(0, dtype=np.uint8))
            if hi >= len(bits):
                bits = self.bits[int(p)] = np.concatenate([bits, np.zeros(hi + 1 - len(bits), dtype=np.uint8)])
            out[mine] = (bits[mine_slots >> 3] >> (mine_slots & 7).astype(np.uint8)) & 1 == 0
            window = np.zeros((hi - lo + 1) * 8, dtype=bool)
            window[mine_slots - lo * 8] = True
            bits[lo : hi + 1] |= np.packbits(window, bitorder="little")
        return out


class LaunchOrder:
    """The launched operations as numpy columns, sorted by (thread, call start, correlation id,
    op start). In that order the operations of one call are adjacent and those of one range
    contiguous.
    """

    def __init__(
        self, ops: pl.DataFrame, columns: OpColumns, comm_name_ids: tuple[int, ...], threads: ThreadIndex
    ) -> None:
        launched = (
            ops.select("pid", "tid", "call_start", "correlation_id", "start")
            .with_row_index("row")
            .filter(pl.col("call_start").is_not_null())
        )
        keys = ["thread", "call_start", "correlation_id", "start"]
        # One multi-column polars sort of the launched operations (four stable numpy sorts took
        # 3.0 s for 10.5 M kernels on two cores; this takes 1.7 s).
        ordered = launched.with_columns(
            thread=pl.Series(threads.keys(launched["pid"].to_numpy(), launched["tid"].to_numpy()))
        ).sort(keys, maintain_order=True)
        self.row = ordered["row"].cast(pl.Int64).to_numpy()
        self.thread = ordered["thread"].to_numpy()
        self.call_start = ordered["call_start"].to_numpy()
        self.start = columns.start[self.row]
        self.end = columns.end[self.row]
        self.call_end = ops["call_end"].to_numpy()[self.row]
        self.pid = ordered["pid"].to_numpy()
        corr = ordered["correlation_id"].to_numpy()
        first = (
            np.concatenate([[True], (corr[1:] != corr[:-1]) | (self.thread[1:] != self.thread[:-1])])
            if len(corr)
            else np.zeros(0, dtype=bool)
        )
        self.new_call = first & columns.fresh[self.row]  # first operation of a launch not counted before
        self.is_kernel = columns.is_kernel[self.row]
        name_id = ops["name_id"].to_numpy()[self.row]
        is_comm = self.is_kernel & np.isin(name_id, np.asarray(comm_name_ids, dtype=np.int64))
        self.is_comm = is_comm if is_comm.any() else None
        kind = ops["kind"].to_physical().to_numpy()[self.row].astype(np.int64)
        # (name, kind) as one int, ranked: the key of the name totals (name ids are negative for copies)
        self.names, self.name_rank = dense_rank(name_id * NAME_KINDS + kind)
        devices, self.device_rank = dense_rank(ops["device"].fill_null(-1).to_numpy()[self.row])
        self.devices = devices.astype(np.int64)
        self.multi_device = len(devices) > 1

    def segments(self, bounds: np.ndarray, inner: np.ndarray) -> Segments:
        """The operations at ``inner`` (pair order), grouped in segments starting at ``bounds``."""
        return Segments(
            bounds,
            self.start[inner],
            self.end[inner],
            self.is_kernel[inner],
            self.new_call[inner],
            self.is_comm[inner] if self.is_comm is not None else None,
        )

    def device_stats(self, rid: np.ndarray, inner: np.ndarray) -> pl.DataFrame:
        key = rid * len(self.devices) + self.device_rank[inner]
        order = np.argsort(key, kind="stable")
        key, inner = key[order], inner[order]
        bounds = segment_bounds(key)
        return pl.DataFrame(
            {
                "rid": key[bounds] // len(self.devices),
                "device": self.devices[key[bounds] % len(self.devices)],
                **reduce_segments(self.segments(bounds, inner)),
            },
            schema_overrides=REDUCED_SCHEMA,
        )

    def name_keys(self, stage: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For a chunk of pairs, the pairs of a range with a stage: (stage, name, kind) as one int key, and duration."""
        keep = stage >= 0
        inner = inner[keep]
        return stage[keep] * len(self.names) + self.name_rank[inner], self.end[inner] - self.start[inner]

    def name_totals(self, keys: list[tuple[np.ndarray, np.ndarray]]) -> pl.DataFrame:
        """Count and total duration per (stage, name_id, kind) over the :meth:`name_keys` of every chunk of pairs.

        One grouping of int keys per set of operations, instead of a three-column grouping per
        chunk of pairs.
        """
        key = np.concatenate([k for k, _ in keys])
        totals = (
            pl.DataFrame({"key": key, "dur": np.concatenate([d for _, d in keys])})
            .group_by("key")
            .agg(pl.len().cast(pl.Int64).alias("count"), pl.col("dur").sum().alias("total_ns"))
        )
        key = totals["key"].to_numpy()
        name = self.names[key % len(self.names)]
        return pl.DataFrame(
            {
                "stage": key // len(self.names),
                "name_id": name // NAME_KINDS,
                "kind": name % NAME_KINDS,
                "count": totals["count"],
                "total_ns": totals["total_ns"],
            }
        )


def dense_rank(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values (few: threads, devices, processes) and each value's rank among them.

    A hash for the distinct values and a binary search per value: far cheaper than np.unique's
    full sort when millions of rows hold a handful of distinct values.
    """
    distinct = np.sort(pl.Series(values).unique().to_numpy())
    return distinct, np.searchsorted(distinct, values)


@dataclass(frozen=True)
class OpColumns:
    """The columns of one set of operations that both the launch order and the totals need, as
    numpy arrays in frame order (converted from polars once)."""

    start: np.ndarray
    end: np.ndarray
    is_kernel: np.ndarray
    launch_key: np.ndarray  # (process rank, correlation id) in one int64; a null id counts as one id
    fresh: np.ndarray

    def take(self, rows: np.ndarray) -> OpColumns:
        """The columns of these rows (in this order)."""
        return OpColumns(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

    @classmethod
    def of(cls, ops: pl.DataFrame, fresh: np.ndarray) -> OpColumns:
        _, pid_rank = dense_rank(ops["pid"].fill_null(-1).to_numpy())
        corr = ops["correlation_id"].fill_null(-1).to_numpy()
        return cls(
            start=ops["start"].to_numpy(),
            end=ops["end"].to_numpy(),
            is_kernel=ops["kind"].is_in(KERNEL_KINDS).to_numpy(),
            launch_key=pid_rank.astype(np.int64) * CORRELATION_LIMIT + (corr + 1),
            fresh=fresh,
        )
