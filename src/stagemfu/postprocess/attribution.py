"""Tie GPU operations to NVTX range instances, the way Nsight Systems does, and time each instance.

The rule (nsys's own, see ARCHITECTURE.md): an operation belongs to a range when the CUDA API call
that launched it lies inside the range on the same thread; operation and call are matched by
correlation id within one process. An operation belongs to its range and to every range enclosing
it. Ranges started and ended on different threads get no operations (nsys projects them neither).

Everything here is columnar: operations are put in launch order once (per thread, by call start),
so the operations of one range are a contiguous slice of that order; (range, operation) pairs
are produced in bounded chunks and reduced per range with segmented numpy reductions.

A trace read in time-ordered chunks (``Trace.op_chunks``) is attributed chunk by chunk with the
same code, several chunks at once; since chunks are cut where no operation runs, their sums,
unions, first starts and last ends combine exactly (:func:`_merge`).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from stagemfu.postprocess.concurrency import CHUNK_WORKERS, REDUCE_THREADS, bounded_map
from stagemfu.postprocess.intervals import (
    DEFAULT_CHUNK_ROWS,
    containment_pairs,
    group_union,
    masked_segment_union,
    segment_bounds,
    segment_union,
    union_length,
    valid_interval,
)
from stagemfu.postprocess.launches import CORRELATION_LIMIT, TID_BITS, main_thread
from stagemfu.postprocess.reader import OP_KIND_TYPE, Trace
from stagemfu.postprocess.tree import RangeTree, range_tree

KERNEL_KINDS = ("kernel", "graph")  # operations whose time counts as kernel time
NAME_KINDS = 8  # a (name_id, kind) pair is keyed name_id * NAME_KINDS + kind (kind: OP_KIND_TYPE's index)

METRICS_SCHEMA = {
    "gpu_start_ns": pl.Int64,
    "gpu_end_ns": pl.Int64,
    "busy_ns": pl.Int64,
    "kernel_ns": pl.Int64,
    "kernels": pl.Int64,
    "gpu_ops": pl.Int64,
    "comm_ns": pl.Int64,
    "comm_busy_ns": pl.Int64,
    "overlap_ns": pl.Int64,
}
COMM_COLUMNS = ("comm_ns", "comm_busy_ns", "overlap_ns")
# (range, operation) pairs whose name keys are held before they are totalled: one grouping per set
# of operations in the usual case, bounded memory where nesting gives an operation many ranges.
NAME_KEYS_HELD = 1 << 22
# Which ranges an operation belongs to (see ``attribute``): those open on the launching thread
# (nsys's rule, the default), or also those open on the process's main thread.
LAUNCH_RULES = ("thread", "process")
# A range is flagged when other threads made at least 1/OTHER_THREAD_SHARE of the launches seen
# while it was open (its own thread made the rest).
OTHER_THREAD_SHARE = 10


@dataclass(frozen=True)
class Attribution:
    """GPU times per range instance and what the per-stage tables need.

    Attributes
    ----------
    instances
        The tree's ranges plus ``gpu_start_ns``, ``gpu_end_ns``, ``span_ns``, ``busy_ns``,
        ``exclusive_busy_ns``, ``kernel_ns``, ``gpu_ops``, ``kernels``, and for communication
        kernels (see ``comm_name_ids`` of :func:`attribute`): ``comm_ns`` (their summed
        durations), ``comm_busy_ns`` (the union of their intervals) and ``overlap_ns`` (time at
        least one communication kernel and at least one other kernel of the range both ran on
        the same device, summed over devices).
    devices
        Per (rid, device): ``span_ns``, ``busy_ns``, ``kernel_ns``, ``gpu_ops``, ``comm_ns``,
        ``comm_busy_ns``, ``overlap_ns``.
    names
        Per (stage, name_id, kind) for the rids given a stage: ``count``, ``total_ns``.
    innermost
        For every row of ``trace.ops``, the rid of the innermost range that launched it, or -1
        (launched outside every range, without a matching runtime call, or left out as damaged).
        Empty when the trace was read in chunks.
    kept
        For every row of ``trace.ops``, whether it was attributed: False for the operations left
        out because they end before they start or lack a time. None when all were, or when the
        trace was read in chunks.
    notes
        Facts about the trace the user should know (unclosed ranges, orphan operations...).
    totals, unattributed
        One row each, for all GPU operations and for those launched outside every range:
        ``kernels``, ``kernel_ns``, ``gpu_start_ns``, ``gpu_end_ns``, ``span_ns``, ``gpu_ops``,
        ``busy_ns``.
    """

    instances: pl.DataFrame
    devices: pl.DataFrame
    names: pl.DataFrame
    innermost: np.ndarray
    notes: tuple[str, ...]
    totals: pl.DataFrame
    unattributed: pl.DataFrame
    kept: np.ndarray | None = None


def attribute(
    trace: Trace,
    tree: RangeTree | None = None,
    *,
    stage_of_rid: np.ndarray | None = None,
    comm_name_ids: tuple[int, ...] = (),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    launches: str = "thread",
) -> Attribution:
    """Attribute every GPU operation of ``trace`` to its NVTX range instances and time them.

    Parameters
    ----------
    trace
        Frames from :func:`stagemfu.postprocess.reader.read_trace`.
    tree
        From :func:`range_tree`; built here when not given.
    stage_of_rid
        For each rid, a stage number (or -1): operation names are totalled per stage for the
        kernel tables. By default no name totals are made.
    comm_name_ids
        ``name_id`` of the kernels that communicate (NCCL and the like); their time and their
        overlap with the other kernels are measured per range. By default none.
    chunk_rows
        Bound on the (range, operation) pairs held at once; smaller uses less memory.
    launches
        "thread" (default, nsys's rule): an operation belongs to the ranges open on the thread
        that launched it. "process": an operation launched by another thread than its process's
        main thread (PyTorch runs backward on its autograd thread) belongs also to the ranges open
        on the main thread when it was launched.

    Returns
    -------
    Attribution
    """
    if launches not in LAUNCH_RULES:
        raise ValueError(f"launches must be one of {', '.join(LAUNCH_RULES)}, not {launches!r}")
    tree = tree or range_tree(trace.ranges)
    ranges = tree.ranges.filter("same_thread")
    on_main_thread = launches == "process"

    def attribute_ops(frame: pl.DataFrame, fresh: np.ndarray) -> _Part:
        return _attribute_ops(frame, ranges, fresh, stage_of_rid, comm_name_ids, chunk_rows, on_main_thread)

    if trace.op_chunks is None:
        parts = [attribute_ops(trace.ops, np.ones(trace.ops.height, dtype=bool))]
    else:
        # A launch counts once: in the first chunk holding one of its operations, so the launches
        # are marked seen chunk by chunk in time order, while the rest runs CHUNK_WORKERS at a time.
        seen = _SeenLaunches()
        parts = list(trace.op_chunks.map(attribute_ops, before=seen.fresh, workers=CHUNK_WORKERS))
    notes = list(tree.notes)
    dropped = sum(p.dropped for p in parts)
    if dropped:
        notes.append(
            f"{dropped} GPU operation(s) end before they start, or have no or impossible times (damaged "
            "records, or clocks that disagree); they are left out"
        )
    orphans = sum(p.orphans for p in parts)
    if orphans:
        notes.append(
            f"{orphans} GPU operation(s) have no matching CUDA API call in the trace (launched before the "
            "capture window, or by an untraced API); they count as unattributed"
        )
    stats = _merge([p.stats for p in parts], ["rid"])
    exclusive = _merge([p.exclusive for p in parts], ["rid"])
    instances = (
        tree.ranges.join(stats, on="rid", how="left")
        .join(exclusive, on="rid", how="left")
        .with_columns(
            [
                pl.col(c).fill_null(0)
                for c in ("busy_ns", "exclusive_busy_ns", "kernel_ns", "gpu_ops", "kernels", *COMM_COLUMNS)
            ]
        )
        .with_columns(span_ns=(pl.col("gpu_end_ns") - pl.col("gpu_start_ns")).fill_null(0))
    )
    notes.extend(_other_thread_notes(instances, _merge([p.other_threads for p in parts], ["rid"])))
    devices = _merge([p.devices for p in parts], ["rid", "device"]).with_columns(
        span_ns=pl.col("gpu_end_ns") - pl.col("gpu_start_ns")
    )
    totals, unattributed = (
        _merge([getattr(p, field) for p in parts], []).with_columns(
            span_ns=(pl.col("gpu_end_ns") - pl.col("gpu_start_ns")).fill_null(0)
        )
        for field in ("totals", "unattributed")
    )
    by_row = parts[0].innermost if trace.op_chunks is None else np.zeros(0, dtype=np.int64)
    kept = parts[0].kept if trace.op_chunks is None else None
    names = _sum_names([n for p in parts for n in p.names])
    return Attribution(instances, devices, names, by_row, tuple(notes), totals, unattributed, kept)


@dataclass(frozen=True)
class _Part:
    """What one chunk of operations contributes; chunks cut where no operation runs add up exactly."""

    stats: pl.DataFrame
    exclusive: pl.DataFrame
    devices: pl.DataFrame
    names: list[pl.DataFrame]
    innermost: np.ndarray
    totals: pl.DataFrame
    unattributed: pl.DataFrame
    other_threads: pl.DataFrame
    orphans: int
    kept: np.ndarray | None = None  # operations attributed (None: all), see _attribute_ops
    dropped: int = 0


def _attribute_ops(frame: pl.DataFrame, ranges: pl.DataFrame, fresh: np.ndarray, *args: object) -> _Part:
    """Attribute one set of operations (the whole trace, or one time-ordered chunk of it), leaving out
    those that end before they start, lack a time or hold an impossible one (damaged records: they
    would give negative times, see :func:`valid_interval`).

    ``args`` are those of :func:`_attribute_valid_ops`.
    """
    bad = ~valid_interval()
    dropped = frame.select(bad.sum()).item()
    if not dropped:
        return _attribute_valid_ops(frame, ranges, fresh, *args)
    kept = frame.select(~bad).to_series().to_numpy()
    part = _attribute_valid_ops(frame.filter(kept), ranges, fresh[kept], *args)
    innermost = np.full(frame.height, -1, dtype=np.int64)
    innermost[kept] = part.innermost
    return dataclasses.replace(part, innermost=innermost, kept=kept, dropped=dropped)


def _attribute_valid_ops(
    frame: pl.DataFrame,
    ranges: pl.DataFrame,
    fresh: np.ndarray,
    stage_of_rid: np.ndarray | None,
    comm_name_ids: tuple[int, ...],
    chunk_rows: int,
    on_main_thread: bool,
) -> _Part:
    """Attribute operations that all have a start and an end no earlier.

    ``fresh`` marks the operations whose launch no earlier chunk counted. With
    ``on_main_thread`` (the process launch rule) each operation launched by another thread also
    enters as a copy launched by its process's main thread: a range lies on one thread, so it
    meets the operation or its copy, never both, and its numbers count each operation once.
    """
    columns = _OpColumns.of(frame, fresh)
    work, source = _with_main_thread_copies(frame) if on_main_thread else (frame, None)
    ops = _LaunchOrder(work, columns if source is None else columns.take(source), comm_name_ids)
    rids = ranges["rid"].to_numpy()
    innermost = np.full(len(ops.start), -1, dtype=np.int64)
    per_range, per_device, per_name, name_parts = [], [], [], []
    held_keys = 0

    def reduce_chunk(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, tuple]:
        outer, inner = pair
        rid = rids[outer]
        bounds = segment_bounds(outer)
        return (
            rid,
            inner,
            (
                pl.DataFrame({"rid": rid[bounds], **ops.stats(bounds, inner)}, schema_overrides=METRICS_SCHEMA),
                ops.device_stats(rid, inner) if ops.multi_device else None,
                ops.name_keys(stage_of_rid[rid], inner) if stage_of_rid is not None else None,
            ),
        )

    pairs = containment_pairs(
        ranges["global_tid"].to_numpy(),
        ranges["start_ns"].to_numpy(),
        ranges["end_ns"].to_numpy(),
        ops.tid,
        ops.call_start,
        ops.call_end,
        chunk_rows=chunk_rows,
    )
    # numpy releases the GIL in its loops, so chunks reduce in parallel threads; the pool's
    # bounded queue keeps at most a few chunks of pairs in memory.
    with ThreadPoolExecutor(REDUCE_THREADS) as pool:
        for rid, inner, (stats, devices, names) in bounded_map(pool, reduce_chunk, pairs, REDUCE_THREADS):
            np.maximum.at(innermost, inner, rid)
            per_range.append(stats)
            if devices is not None:
                per_device.append(devices)
            if names is not None:
                per_name.append(names)
                held_keys += len(names[0])
                if held_keys > NAME_KEYS_HELD:  # deep nesting: many pairs per operation
                    name_parts.append(ops.name_totals(per_name))
                    per_name, held_keys = [], 0

    stats = pl.concat(per_range) if per_range else pl.DataFrame(schema={"rid": pl.Int64, **METRICS_SCHEMA})
    by_row = _innermost_by_row(frame.height, ops.row, innermost, source)
    # Exclusive busy in launch order (nearly grouped by range already: the cheap sort), each
    # operation once, with the range chosen as its innermost (not its copy's, when it has one).
    chosen = (innermost >= 0) & (innermost == by_row[ops.row if source is None else source[ops.row]])
    excl_rid, excl_busy = group_union(innermost[chosen], ops.start[chosen], ops.end[chosen])
    exclusive = pl.DataFrame(
        {"rid": excl_rid, "exclusive_busy_ns": excl_busy}, schema={"rid": pl.Int64, "exclusive_busy_ns": pl.Int64}
    )
    if ops.multi_device:
        devices = (
            pl.concat(per_device)
            if per_device
            else pl.DataFrame(schema={"rid": pl.Int64, "device": pl.Int64, **METRICS_SCHEMA})
        )
        # Overlap is a per-device fact (NCCL on one GPU hides no compute on another): sum it.
        overlap = devices.group_by("rid").agg(pl.col("overlap_ns").sum())
        stats = stats.drop("overlap_ns").join(overlap, on="rid", how="left")
    else:
        devices = stats.with_columns(device=pl.lit(int(ops.devices[0]) if len(ops.devices) else 0, pl.Int64))
    outside = by_row < 0
    return _Part(
        stats=stats,
        exclusive=exclusive,
        devices=devices.select("rid", "device", *METRICS_SCHEMA),
        names=[*name_parts, ops.name_totals(per_name)] if per_name else name_parts,
        innermost=by_row,
        totals=_op_totals(columns, slice(None)),
        unattributed=_op_totals(columns, np.flatnonzero(outside)),
        other_threads=_other_thread_launches(ranges, ops, innermost < 0) if source is None else _NO_OTHER_THREADS,
        orphans=frame.height - int(frame["call_start"].is_not_null().sum()),
    )


def _innermost_by_row(height: int, order: np.ndarray, innermost: np.ndarray, source: np.ndarray | None) -> np.ndarray:
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


def _with_main_thread_copies(frame: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray | None]:
    """The operations, then a copy of each one launched off its process's main thread, relaunched
    there; and for every row, the row of the original (None when there is nothing to copy).

    nsys global thread ids hold the process id above ``TID_BITS`` and the thread id below; the
    main thread's id is the process id.
    """
    tid = pl.col("global_tid")
    main = main_thread(tid)
    others = frame.with_row_index("source").filter(tid.is_not_null() & (tid != main))
    if others.is_empty():
        return frame, None
    copies = others.with_columns(global_tid=main)
    source = np.concatenate([np.arange(frame.height), others["source"].cast(pl.Int64).to_numpy()])
    return pl.concat([frame, copies.drop("source")]), source


_NO_OTHER_THREADS = pl.DataFrame(schema={"rid": pl.Int64, "other_thread_ops": pl.Int64})


def _other_thread_launches(ranges: pl.DataFrame, ops: _LaunchOrder, outside: np.ndarray) -> pl.DataFrame:
    """Per range instance: launches made outside every range by other threads of its process while it was open.

    NVTX ranges belong to a thread, so work that a framework hands to a worker thread (PyTorch's
    autograd runs backward on one thread per device) is attributed to no range, here as in
    nsys. Counting those launches lets the report say so instead of showing an idle stage.
    """
    launch = outside & ops.new_call
    if not launch.any():
        return _NO_OTHER_THREADS
    process, at = ops.tid[launch] // TID_BITS, ops.call_start[launch]
    start, end = ranges["start_ns"].to_numpy(), ranges["end_ns"].to_numpy()
    near = np.flatnonzero((start <= at.max()) & (end > at.min()))  # a chunk's launches span a short time
    start, end = start[near], end[near]
    range_process = ranges["global_tid"].to_numpy()[near] // TID_BITS
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


def _other_thread_notes(instances: pl.DataFrame, other: pl.DataFrame) -> list[str]:
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


def _merge(frames: list[pl.DataFrame], keys: list[str]) -> pl.DataFrame:
    """Combine the parts of time-ordered chunks: first start, last end, and every other column summed."""
    if len(frames) == 1:
        return frames[0]
    merged = pl.concat(frames)
    aggs = [
        pl.col(c).min() if c == "gpu_start_ns" else pl.col(c).max() if c == "gpu_end_ns" else pl.col(c).sum()
        for c in merged.columns
        if c not in keys
    ]
    return merged.group_by(keys).agg(aggs) if keys else merged.select(aggs)


class _SeenLaunches:
    """The launches (process, correlation id) met in earlier chunks: a packed bitset per process."""

    def __init__(self) -> None:
        self.bits: dict[int, np.ndarray] = {}

    def fresh(self, ops: pl.DataFrame) -> np.ndarray:
        """True for each operation whose launch no earlier call of this method has seen; then marks them seen.

        This runs on the chunks one at a time, so it is kept cheap: a chunk's correlation ids lie in
        a narrow window, and that window's bits are set at once from a packed boolean mask.
        """
        pid = ops["global_pid"].fill_null(-1).to_numpy()
        slot = ops["correlation_id"].fill_null(-1).to_numpy() + 1  # a null id (-1) gets slot 0
        out = np.ones(len(slot), dtype=bool)
        if not len(slot):
            return out
        one_process = pid.min() == pid.max()
        for p in pid[:1] if one_process else _dense_rank(pid)[0]:  # processes: a handful
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


class _LaunchOrder:
    """The launched operations as numpy columns, sorted by (thread, call start, correlation id,
    op start). In that order the operations of one call are adjacent and those of one range
    contiguous.
    """

    def __init__(self, ops: pl.DataFrame, columns: _OpColumns, comm_name_ids: tuple[int, ...]) -> None:
        keys = ["global_tid", "call_start", "correlation_id", "start"]
        # One multi-column polars sort of the launched operations (four stable numpy sorts took
        # 3.0 s for 10.5 M kernels on two cores; this takes 1.7 s).
        self.row = (
            ops.select(keys)
            .with_row_index("row")
            .filter(pl.col("call_start").is_not_null())
            .sort(keys, maintain_order=True)
            .get_column("row")
            .cast(pl.Int64)
            .to_numpy()
        )
        self.start = columns.start[self.row]
        self.end = columns.end[self.row]
        self.call_start = ops["call_start"].to_numpy()[self.row]
        self.call_end = ops["call_end"].to_numpy()[self.row]
        self.tid = ops["global_tid"].to_numpy()[self.row]
        corr = ops["correlation_id"].to_numpy()[self.row]
        first = (
            np.concatenate([[True], (corr[1:] != corr[:-1]) | (self.tid[1:] != self.tid[:-1])])
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
        self.names, self.name_rank = _dense_rank(name_id * NAME_KINDS + kind)
        devices, self.device_rank = _dense_rank(ops["device"].fill_null(-1).to_numpy()[self.row])
        self.devices = devices.astype(np.int64)
        self.multi_device = len(devices) > 1

    def stats(self, bounds: np.ndarray, inner: np.ndarray) -> dict[str, np.ndarray]:
        """Span ends, busy, kernel time and counts per segment of a chunk of pairs."""
        s, e, k = self.start[inner], self.end[inner], self.is_kernel[inner]
        return {
            "gpu_start_ns": np.minimum.reduceat(s, bounds),
            "gpu_end_ns": np.maximum.reduceat(e, bounds),
            "busy_ns": segment_union(bounds, s, e),
            "kernel_ns": np.add.reduceat(np.where(k, e - s, 0), bounds),
            "kernels": np.add.reduceat(k.astype(np.int64), bounds),
            # A GPU op is one launch: the first operation of each call (a graph's kernels share one).
            "gpu_ops": np.add.reduceat(self.new_call[inner].astype(np.int64), bounds),
            **self.comm_stats(bounds, inner),
        }

    def comm_stats(self, bounds: np.ndarray, inner: np.ndarray) -> dict[str, np.ndarray]:
        """Communication kernel time, its union, and its overlap with the other kernels, per segment.

        overlap = busy(communication) + busy(other kernels) - busy(all kernels): inclusion-exclusion
        on the three unions gives the time both kinds ran at once.
        """
        if self.is_comm is None:  # no communication kernel in the trace: skip three unions
            zeros = np.zeros(len(bounds), dtype=np.int64)
            return {c: zeros for c in COMM_COLUMNS}
        s, e = self.start[inner], self.end[inner]
        comm, kernel = self.is_comm[inner], self.is_kernel[inner]
        comm_busy = masked_segment_union(bounds, s, e, comm)
        compute_busy = masked_segment_union(bounds, s, e, kernel & ~comm)
        kernel_busy = masked_segment_union(bounds, s, e, kernel)
        return {
            "comm_ns": np.add.reduceat(np.where(comm, e - s, 0), bounds),
            "comm_busy_ns": comm_busy,
            "overlap_ns": comm_busy + compute_busy - kernel_busy,
        }

    def device_stats(self, rid: np.ndarray, inner: np.ndarray) -> pl.DataFrame:
        key = rid * len(self.devices) + self.device_rank[inner]
        order = np.argsort(key, kind="stable")
        key, inner = key[order], inner[order]
        bounds = segment_bounds(key)
        return pl.DataFrame(
            {
                "rid": key[bounds] // len(self.devices),
                "device": self.devices[key[bounds] % len(self.devices)],
                **self.stats(bounds, inner),
            },
            schema_overrides=METRICS_SCHEMA,
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


def _dense_rank(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values (few: threads, devices, processes) and each value's rank among them.

    A hash for the distinct values and a binary search per value: far cheaper than np.unique's
    full sort when millions of rows hold a handful of distinct values.
    """
    distinct = np.sort(pl.Series(values).unique().to_numpy())
    return distinct, np.searchsorted(distinct, values)


def _sum_names(parts: list[pl.DataFrame]) -> pl.DataFrame:
    schema = {"stage": pl.Int64, "name_id": pl.Int64, "kind": OP_KIND_TYPE, "count": pl.Int64, "total_ns": pl.Int64}
    if not parts:
        return pl.DataFrame(schema=schema)
    summed = pl.concat(parts).group_by("stage", "name_id", "kind").agg(pl.col("count").sum(), pl.col("total_ns").sum())
    kinds = pl.Series(OP_KIND_TYPE.categories)
    return summed.with_columns(kind=kinds.gather(summed["kind"]).cast(OP_KIND_TYPE)).select(list(schema))


def _op_totals(columns: _OpColumns, rows: np.ndarray | slice) -> pl.DataFrame:
    """Counts, kernel time, busy (union) and first start/last end of the operations at ``rows``, as one row.

    A GPU op is one launch: a (process, correlation id) pair (a graph's kernels share one), counted
    only when fresh (not counted in an earlier chunk).
    """
    start, end, kernel = columns.start[rows], columns.end[rows], columns.is_kernel[rows]
    fresh = columns.fresh[rows]
    launches = _distinct(columns.launch_key[rows][fresh])
    empty = len(start) == 0
    return pl.DataFrame(
        {
            "kernels": [int(kernel.sum())],
            "kernel_ns": [int(np.where(kernel, end - start, 0).sum())],
            "gpu_start_ns": [None if empty else int(start.min())],
            "gpu_end_ns": [None if empty else int(end.max())],
            "gpu_ops": [launches],
            "busy_ns": [union_length(start, end)],
        },
        schema={c: pl.Int64 for c in ("kernels", "kernel_ns", "gpu_start_ns", "gpu_end_ns", "gpu_ops", "busy_ns")},
    )


def _distinct(keys: np.ndarray) -> int:
    """Number of distinct values; a stable sort is near-linear on these nearly ordered ids."""
    if len(keys) == 0:
        return 0
    ordered = np.sort(keys, kind="stable")
    return 1 + int(np.count_nonzero(ordered[1:] != ordered[:-1]))


@dataclass(frozen=True)
class _OpColumns:
    """The columns of one set of operations that both the launch order and the totals need, as
    numpy arrays in frame order (converted from polars once)."""

    start: np.ndarray
    end: np.ndarray
    is_kernel: np.ndarray
    launch_key: np.ndarray  # (process rank, correlation id) in one int64; a null id counts as one id
    fresh: np.ndarray

    def take(self, rows: np.ndarray) -> _OpColumns:
        """The columns of these rows (in this order)."""
        return _OpColumns(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

    @classmethod
    def of(cls, ops: pl.DataFrame, fresh: np.ndarray) -> _OpColumns:
        _, pid_rank = _dense_rank(ops["global_pid"].fill_null(-1).to_numpy())
        corr = ops["correlation_id"].fill_null(-1).to_numpy()
        return cls(
            start=ops["start"].to_numpy(),
            end=ops["end"].to_numpy(),
            is_kernel=ops["kind"].is_in(KERNEL_KINDS).to_numpy(),
            launch_key=pid_rank.astype(np.int64) * CORRELATION_LIMIT + (corr + 1),
            fresh=fresh,
        )
