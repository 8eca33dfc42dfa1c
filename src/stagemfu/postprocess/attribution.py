"""Time each NVTX range instance: its GPU operations (:mod:`.owners`) reduced to every metric (:mod:`.metrics`).

The rule (nsys's own, see ARCHITECTURE.md): an operation belongs to a range when the CPU call
that launched it lies inside the range on the same thread; operation and call are matched by
correlation id within one process. An operation belongs to its range and to every range enclosing
it. Ranges started and ended on different threads get no operations (nsys projects them neither).

Everything here is columnar: (range, operation) pairs are produced in bounded chunks and reduced
per range with segmented numpy reductions, one per metric of the registry. The operations come
in batches (``Trace.ops``: one when the trace is held in memory, time-ordered chunks otherwise),
attributed one by one with the same code, several at once; since batches are cut where no
operation runs, each metric's values combine exactly by its merge rule (:func:`.metrics.merge`).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from stagemfu.postprocess.concurrency import CHUNK_WORKERS, REDUCE_THREADS, bounded_map
from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS, group_union, segment_bounds, valid_interval
from stagemfu.postprocess.metrics import (
    METRICS,
    REDUCED,
    REDUCED_SCHEMA,
    Segments,
    derived,
    merge,
    reduce_segments,
)
from stagemfu.postprocess.owners import (
    LAUNCH_RULES,
    LaunchOrder,
    OpColumns,
    SeenLaunches,
    innermost_by_row,
    other_thread_launches,
    other_thread_notes,
    owner_pairs,
    with_main_thread_copies,
)
from stagemfu.postprocess.threads import ThreadIndex
from stagemfu.postprocess.trace import OP_KIND_TYPE, Trace
from stagemfu.postprocess.tree import RangeTree, range_tree

# (range, operation) pairs whose name keys are held before they are totalled: one grouping per set
# of operations in the usual case, bounded memory where nesting gives an operation many ranges.
NAME_KEYS_HELD = 1 << 22
# The trace's totals: the metrics given for all its work, and the first start and last end they derive from.
TOTAL_METRICS = tuple(m for m in REDUCED if m.totals or m.name in ("gpu_start_ns", "gpu_end_ns"))
TOTALS_SCHEMA = {m.name: pl.Int64 for m in TOTAL_METRICS}
# Filled with 0 for a range that launched nothing (a first start stays null: it has none).
ZERO_WHEN_NONE = [m.name for m in METRICS if m.merge == "sum" and m.derive is None and m.name != "wall_ns"]
_NO_OTHER_THREADS = pl.DataFrame(schema={"rid": pl.Int64, "other_thread_ops": pl.Int64})


@dataclass(frozen=True)
class Attribution:
    """GPU times per range instance and what the per-stage tables need.

    Attributes
    ----------
    instances
        The tree's ranges plus every metric of :data:`stagemfu.postprocess.metrics.METRICS`:
        ``gpu_start_ns``, ``gpu_end_ns``, ``span_ns``, ``busy_ns``, ``exclusive_busy_ns``,
        ``kernel_ns``, ``gpu_ops``, ``kernels``, and for communication kernels (see
        ``comm_name_ids`` of :func:`attribute`): ``comm_ns`` (their summed durations),
        ``comm_busy_ns`` (the union of their intervals) and ``overlap_ns`` (time at least one
        communication kernel and at least one other kernel of the range both ran on the same
        device, summed over devices).
    devices
        Per (rid, device): the metrics given per device (``span_ns``, ``busy_ns``, ...).
    names
        Per (stage, name_id, kind) for the rids given a stage: ``count``, ``total_ns``.
    innermost
        For every row of ``trace.ops.held``, the rid of the innermost range that launched it, or
        -1 (launched outside every range, without a matching runtime call, or left out as
        damaged). Empty when the operations were not held in memory.
    kept
        For every row of ``trace.ops.held``, whether it was attributed: False for the operations
        left out because they end before they start or lack a time. None when all were, or when
        the operations were not held in memory.
    notes
        Facts about the trace the user should know (unclosed ranges, orphan operations...).
    totals, unattributed
        One row each, for all GPU operations and for those launched outside every range: the
        metrics given for the trace's totals, and ``gpu_start_ns``, ``gpu_end_ns``.
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
        From a reader (:func:`stagemfu.postprocess.formats.read`).
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
    threads = ThreadIndex.of(tree.ranges)
    on_main_thread = launches == "process"

    def attribute_ops(frame: pl.DataFrame, fresh: np.ndarray) -> _Part:
        return _attribute_ops(frame, ranges, fresh, threads, stage_of_rid, comm_name_ids, chunk_rows, on_main_thread)

    # A launch counts once: in the first batch holding one of its operations, so the launches are
    # marked seen batch by batch in time order, while the rest runs CHUNK_WORKERS batches at a time.
    seen = SeenLaunches(len(trace.ops))
    parts = list(trace.ops.map(attribute_ops, before=seen.fresh, workers=CHUNK_WORKERS))
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
    instances = (
        tree.ranges.join(merge([p.stats for p in parts], ["rid"]), on="rid", how="left")
        .join(merge([p.exclusive for p in parts], ["rid"]), on="rid", how="left")
        .with_columns([pl.col(c).fill_null(0) for c in ZERO_WHEN_NONE])
        .with_columns(derived())
    )
    notes.extend(other_thread_notes(instances, merge([p.other_threads for p in parts], ["rid"])))
    devices = merge([p.devices for p in parts], ["rid", "device"]).with_columns(derived())
    totals, unattributed = (
        merge([getattr(p, field) for p in parts], []).with_columns(derived()) for field in ("totals", "unattributed")
    )
    held = trace.ops.held is not None  # per-operation results are kept only for operations held in memory
    by_row = parts[0].innermost if held else np.zeros(0, dtype=np.int64)
    kept = parts[0].kept if held else None
    names = _sum_names([n for p in parts for n in p.names])
    return Attribution(instances, devices, names, by_row, tuple(notes), totals, unattributed, kept)


@dataclass(frozen=True)
class _Part:
    """What one batch of operations contributes; batches cut where no operation runs add up exactly."""

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


def _attribute_ops(frame: pl.DataFrame, ranges: pl.DataFrame, fresh: np.ndarray, *args: Any) -> _Part:
    """Attribute one batch of operations, leaving out those that end before they start, lack a time
    or hold an impossible one (damaged records: they would give negative times, see
    :func:`valid_interval`).

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
    threads: ThreadIndex,
    stage_of_rid: np.ndarray | None,
    comm_name_ids: tuple[int, ...],
    chunk_rows: int,
    on_main_thread: bool,
) -> _Part:
    """Attribute operations that all have a start and an end no earlier.

    ``fresh`` marks the operations whose launch no earlier batch counted. With ``on_main_thread``
    (the process launch rule) each operation launched by another thread also enters as a copy
    launched by its process's main thread (:func:`.owners.with_main_thread_copies`).
    """
    columns = OpColumns.of(frame, fresh)
    work, source = with_main_thread_copies(frame) if on_main_thread else (frame, None)
    ops = LaunchOrder(work, columns if source is None else columns.take(source), comm_name_ids, threads)
    rids = ranges["rid"].to_numpy()
    innermost = np.full(len(ops.start), -1, dtype=np.int64)
    per_range, per_device, per_name, name_parts = [], [], [], []
    held_keys = 0

    def reduce_chunk(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, tuple]:
        outer, inner = pair
        rid = rids[outer]
        bounds = segment_bounds(outer)
        values = reduce_segments(ops.segments(bounds, inner))
        return (
            rid,
            inner,
            (
                pl.DataFrame({"rid": rid[bounds], **values}, schema_overrides=REDUCED_SCHEMA),
                ops.device_stats(rid, inner) if ops.multi_device else None,
                ops.name_keys(stage_of_rid[rid], inner) if stage_of_rid is not None else None,
            ),
        )

    # numpy releases the GIL in its loops, so chunks reduce in parallel threads; the pool's
    # bounded queue keeps at most a few chunks of pairs in memory.
    with ThreadPoolExecutor(REDUCE_THREADS) as pool:
        pairs = owner_pairs(ranges, ops, chunk_rows=chunk_rows)
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

    stats = pl.concat(per_range) if per_range else pl.DataFrame(schema={"rid": pl.Int64, **REDUCED_SCHEMA})
    by_row = innermost_by_row(frame.height, ops.row, innermost, source)
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
            else pl.DataFrame(schema={"rid": pl.Int64, "device": pl.Int64, **REDUCED_SCHEMA})
        )
        # Overlap is a per-device fact (NCCL on one GPU hides no compute on another): sum it.
        overlap = devices.group_by("rid").agg(pl.col("overlap_ns").sum())
        stats = stats.drop("overlap_ns").join(overlap, on="rid", how="left").select("rid", *REDUCED_SCHEMA)
    else:
        devices = stats.with_columns(device=pl.lit(int(ops.devices[0]) if len(ops.devices) else 0, pl.Int64))
    outside = by_row < 0
    return _Part(
        stats=stats,
        exclusive=exclusive,
        devices=devices.select("rid", "device", *REDUCED_SCHEMA),
        names=[*name_parts, ops.name_totals(per_name)] if per_name else name_parts,
        innermost=by_row,
        totals=_op_totals(columns, slice(None)),
        unattributed=_op_totals(columns, np.flatnonzero(outside)),
        other_threads=other_thread_launches(ranges, ops, innermost < 0) if source is None else _NO_OTHER_THREADS,
        orphans=frame.height - int(frame["call_start"].is_not_null().sum()),
    )


def _sum_names(parts: list[pl.DataFrame]) -> pl.DataFrame:
    schema = {"stage": pl.Int64, "name_id": pl.Int64, "kind": OP_KIND_TYPE, "count": pl.Int64, "total_ns": pl.Int64}
    if not parts:
        return pl.DataFrame(schema=schema)
    summed = pl.concat(parts).group_by("stage", "name_id", "kind").agg(pl.col("count").sum(), pl.col("total_ns").sum())
    kinds = pl.Series(OP_KIND_TYPE.categories)
    return summed.with_columns(kind=kinds.gather(summed["kind"]).cast(OP_KIND_TYPE)).select(list(schema))


def _op_totals(columns: OpColumns, rows: np.ndarray | slice) -> pl.DataFrame:
    """The trace-total metrics of the operations at ``rows`` as one segment, in one row.

    A GPU op is one launch: a (process, correlation id) pair (a graph's kernels share one), counted
    once, and only when fresh (not counted in an earlier batch): the first of each launch key in a
    stable sort of the keys (near-linear on these nearly ordered ids) marks it.
    """
    start, key = columns.start[rows], columns.launch_key[rows]
    if not len(start):
        return pl.DataFrame({m.name: [0 if m.merge == "sum" else None] for m in TOTAL_METRICS}, schema=TOTALS_SCHEMA)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    first = np.zeros(len(key), dtype=bool)
    first[order[np.concatenate([[True], ordered[1:] != ordered[:-1]])]] = True
    whole = Segments(
        np.zeros(1, dtype=np.int64),
        start,
        columns.end[rows],
        columns.is_kernel[rows],
        first & columns.fresh[rows],
        None,
    )
    return pl.DataFrame(reduce_segments(whole, TOTAL_METRICS), schema=TOTALS_SCHEMA)
