"""Tie GPU operations to NVTX range instances, the way Nsight Systems does, and time each instance.

The rule (nsys's own, see ARCHITECTURE.md): an operation belongs to a range when the CUDA API call
that launched it lies inside the range on the same thread; operation and call are matched by
correlation id within one process. An operation belongs to its range and to every range enclosing
it. Ranges started and ended on different threads get no operations (nsys projects them neither).

Everything here is columnar: one sort, binary searches per thread, and group-bys over the
(range, operation) pairs, produced in bounded chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from stagemfu.errors import TraceError
from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS, containment_pairs, union_ns
from stagemfu.postprocess.reader import OP_KIND_TYPE, Trace

# nsys packs a process id and a thread id into globalTid: pid in bits 24-47, tid in bits 0-23,
# with the VM id above; the process part of a thread's id (tid bits cleared) is its globalPid.
TID_BITS = 1 << 24
CORRELATION_LIMIT = 1 << 40


@dataclass(frozen=True)
class Attribution:
    """Per-instance times and the per-operation facts the aggregates need.

    Attributes
    ----------
    instances
        One row per range instance (closed ranges only): ``rid`` (dense id), ``range_id``,
        ``domain``, ``name``, ``style``, ``pid``, ``tid``, ``start_ns``, ``end_ns``, ``wall_ns``,
        ``gpu_start_ns``, ``gpu_end_ns``, ``span_ns``, ``busy_ns``, ``exclusive_busy_ns``,
        ``kernel_ns``, ``gpu_ops``, ``kernels``, ``depth``, ``parent_rid``, ``path``,
        ``same_thread``.
    ancestors
        ``outer``, ``inner``: every (enclosing range, enclosed range) pair of rids.
    memberships
        Per chunk aggregates of (rid, op name): ``rid``, ``name_id``, ``kind``, ``count``,
        ``total_ns``.
    devices
        Per (rid, device): ``span_ns``, ``busy_ns``, ``kernel_ns``, ``gpu_ops``.
    ops
        Every GPU operation with ``innermost_rid`` (-1 when launched outside every range or
        without a matching runtime call).
    notes
        Facts about the trace the user should know (unclosed ranges, orphan operations...).
    """

    instances: pl.DataFrame
    ancestors: pl.DataFrame
    memberships: pl.DataFrame
    devices: pl.DataFrame
    ops: pl.DataFrame
    notes: tuple[str, ...]


def attribute(trace: Trace, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Attribution:
    """Attribute every GPU operation of ``trace`` to its NVTX range instances and time them.

    Parameters
    ----------
    trace
        Frames from :func:`stagemfu.postprocess.reader.read_trace`.
    chunk_rows
        Bound on the (range, operation) pairs held at once; smaller uses less memory.

    Returns
    -------
    Attribution
    """
    notes: list[str] = []
    ranges = _closed_ranges(trace.ranges, notes)
    ancestors = _ancestors(ranges, chunk_rows)
    ranges = _with_tree(ranges, ancestors)
    ops = _ops_with_calls(trace, notes)

    attributable = ranges.filter("same_thread")
    launched = ops.filter(pl.col("call_start").is_not_null()).sort(
        ["global_tid", "call_start", "correlation_id", "start"]
    )
    innermost = np.full(launched.height, -1, dtype=np.int64)
    per_range, per_device, per_name = [], [], []
    multi_device = ops["device"].n_unique() > 1
    op_cols = launched.select("start", "end", "device", "correlation_id", "kind", "name_id")
    for outer, inner in containment_pairs(
        attributable["global_tid"].to_numpy(), attributable["start_ns"].to_numpy(), attributable["end_ns"].to_numpy(),
        launched["global_tid"].to_numpy(), launched["call_start"].to_numpy(), launched["call_end"].to_numpy(),
        chunk_rows=chunk_rows,
    ):
        rid = attributable["rid"].to_numpy()[outer]
        np.maximum.at(innermost, inner, rid)
        pairs = op_cols[inner].with_columns(rid=pl.Series(rid))
        per_range.append(_op_stats(pairs, ["rid"]))
        if multi_device:
            per_device.append(_op_stats(pairs, ["rid", "device"]))
        per_name.append(
            pairs.group_by("rid", "name_id", "kind").agg(
                pl.len().cast(pl.Int64).alias("count"), (pl.col("end") - pl.col("start")).sum().alias("total_ns")
            )
        )

    stats = _concat(per_range, _op_stats(op_cols.head(0).with_columns(rid=pl.lit(0, pl.Int64)), ["rid"]))
    exclusive = union_ns(
        launched.with_columns(rid=pl.Series(innermost)).filter(pl.col("rid") >= 0), ["rid"], out="exclusive_busy_ns"
    )
    instances = (
        ranges.join(stats, on="rid", how="left")
        .join(exclusive, on="rid", how="left")
        .with_columns(
            [pl.col(c).fill_null(0) for c in ("busy_ns", "exclusive_busy_ns", "kernel_ns", "gpu_ops", "kernels")]
        )
        .with_columns(span_ns=(pl.col("gpu_end_ns") - pl.col("gpu_start_ns")).fill_null(0))
    )
    all_ops = pl.concat([
        launched.with_columns(innermost_rid=pl.Series(innermost)),
        ops.filter(pl.col("call_start").is_null()).with_columns(innermost_rid=pl.lit(-1, pl.Int64)),
    ])
    if multi_device:
        devices = _concat(per_device, _op_stats(op_cols.head(0).with_columns(rid=pl.lit(0, pl.Int64)), ["rid", "device"]))
    else:
        devices = stats.with_columns(device=pl.lit(ops["device"].first(), pl.Int64))
    devices = devices.with_columns(span_ns=pl.col("gpu_end_ns") - pl.col("gpu_start_ns"))
    memberships = _concat(per_name, pl.DataFrame(schema={
        "rid": pl.Int64, "name_id": pl.Int64, "kind": OP_KIND_TYPE, "count": pl.Int64, "total_ns": pl.Int64}))
    return Attribution(instances, ancestors, memberships, devices, all_ops, tuple(notes))


def _closed_ranges(ranges: pl.DataFrame, notes: list[str]) -> pl.DataFrame:
    """Closed ranges, in (thread, start, longest first) order, with a dense ``rid`` in that order.

    That order puts every range after the ranges enclosing it on its thread, so "the enclosing
    range with the largest rid" is the innermost one.
    """
    unclosed = ranges.filter(pl.col("end").is_null()).height
    if unclosed:
        notes.append(f"{unclosed} NVTX range(s) never ended (the capture stopped inside them); they are left out")
    cross = ranges.filter(
        pl.col("end_global_tid").is_not_null() & (pl.col("end_global_tid") != pl.col("global_tid"))
    ).height
    if cross:
        notes.append(
            f"{cross} start/end range(s) ended on another thread: wall time only, no GPU work is "
            "attributed to them (as in nsys)"
        )
    return (
        ranges.filter(pl.col("end").is_not_null())
        .sort(["global_tid", "start", "end", "range_id"], descending=[False, False, True, False])
        .with_row_index("rid")
        .select(
            pl.col("rid").cast(pl.Int64), "range_id", "domain", "name", "style",
            ((pl.col("global_tid") // TID_BITS) % TID_BITS).alias("pid"),
            (pl.col("global_tid") % TID_BITS).alias("tid"),
            "global_tid",
            pl.col("start").alias("start_ns"), pl.col("end").alias("end_ns"),
            (pl.col("end") - pl.col("start")).alias("wall_ns"),
            (pl.col("end_global_tid").is_null() | (pl.col("end_global_tid") == pl.col("global_tid"))).alias("same_thread"),
        )
    )


def _ancestors(ranges: pl.DataFrame, chunk_rows: int) -> pl.DataFrame:
    """Every (outer, inner) pair of rids where outer encloses inner on the same thread."""
    start, end, tid = (ranges[c].to_numpy() for c in ("start_ns", "end_ns", "global_tid"))
    chunks = []
    for outer, inner in containment_pairs(tid, start, end, tid, start, end, chunk_rows=chunk_rows):
        keep = outer < inner  # rid order: an enclosing range always comes first; drops self-pairs
        chunks.append(pl.DataFrame({"outer": outer[keep], "inner": inner[keep]}))
    return _concat(chunks, pl.DataFrame(schema={"outer": pl.Int64, "inner": pl.Int64}))


def _with_tree(ranges: pl.DataFrame, ancestors: pl.DataFrame) -> pl.DataFrame:
    """Add ``depth``, ``parent_rid`` (innermost enclosing range) and ``path`` (names joined by /)."""
    tree = ancestors.group_by("inner").agg(pl.len().cast(pl.Int64).alias("depth"), pl.col("outer").max().alias("parent_rid"))
    ranges = ranges.join(tree, left_on="rid", right_on="inner", how="left").with_columns(
        pl.col("depth").fill_null(0)
    ).sort("rid")
    names = ranges["name"]
    parent = ranges["parent_rid"]
    path = names
    hop = parent
    while hop.is_not_null().any():
        path = pl.select(
            pl.when(hop.is_not_null()).then(pl.concat_str([names.gather(hop.fill_null(0)), pl.lit("/"), path])).otherwise(path)
        ).to_series()
        hop = pl.select(pl.when(hop.is_not_null()).then(parent.gather(hop.fill_null(0)))).to_series()
    return ranges.with_columns(path=path)


def _ops_with_calls(trace: Trace, notes: list[str]) -> pl.DataFrame:
    """GPU operations with the runtime call that launched them: same process, same correlation id.

    A sorted lookup (binary search of each operation's key in the sorted call keys) rather than a
    hash join: same result, a fraction of the memory on traces with millions of kernels. A key
    that appears twice among the calls resolves to the first call, as SQLite's join would.
    """
    calls, ops = trace.calls, trace.ops
    call_pid = (calls["global_tid"] - calls["global_tid"] % TID_BITS).to_numpy()
    pids = np.unique(np.concatenate([call_pid, ops["global_pid"].to_numpy()]))
    call_key = _key(pids, call_pid, calls["correlation_id"].to_numpy())
    op_key = _key(pids, ops["global_pid"].to_numpy(), ops["correlation_id"].to_numpy())
    order = np.argsort(call_key, kind="stable")
    sorted_keys = call_key[order]
    pos = np.minimum(np.searchsorted(sorted_keys, op_key), max(len(sorted_keys) - 1, 0))
    found = sorted_keys[pos] == op_key if len(sorted_keys) else np.zeros(len(op_key), dtype=bool)
    row = pl.Series(np.where(found, order[pos] if len(order) else 0, 0))
    hit = pl.Series(found)
    picked = calls.select(
        pl.col("start").alias("call_start"), pl.col("end").alias("call_end"), "global_tid"
    )[row] if calls.height else pl.DataFrame(schema={"call_start": pl.Int64, "call_end": pl.Int64, "global_tid": pl.Int64}, data=[[0] * len(row)] * 3)
    ops = ops.with_columns(picked.select(pl.when(hit).then(pl.col(c)).alias(c) for c in picked.columns))
    orphans = int((~found).sum())
    if orphans:
        notes.append(
            f"{orphans} GPU operation(s) have no matching CUDA API call in the trace (launched before the "
            "capture window, or by an untraced API); they count as unattributed"
        )
    return ops


def _key(pids: np.ndarray, global_pid: np.ndarray, correlation_id: np.ndarray) -> np.ndarray:
    """One int64 per (process, correlation id): the process's rank in the high bits."""
    if len(correlation_id) and (correlation_id.min() < 0 or correlation_id.max() >= CORRELATION_LIMIT):
        raise TraceError("correlation ids outside [0, 2^40): the export looks damaged")
    return np.searchsorted(pids, global_pid).astype(np.int64) * CORRELATION_LIMIT + correlation_id


def _op_stats(pairs: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Span ends, kernel time and counts, and busy time per group of (range, operation) pairs."""
    is_kernel = pl.col("kind").is_in(["kernel", "graph"])
    sums = pairs.group_by(keys).agg(
        pl.col("start").min().alias("gpu_start_ns"),
        pl.col("end").max().alias("gpu_end_ns"),
        pl.when(is_kernel).then(pl.col("end") - pl.col("start")).otherwise(0).sum().cast(pl.Int64).alias("kernel_ns"),
        is_kernel.sum().cast(pl.Int64).alias("kernels"),
        pl.col("correlation_id").n_unique().cast(pl.Int64).alias("gpu_ops"),
    )
    return sums.join(union_ns(pairs, keys), on=keys, how="left")


def _concat(frames: list[pl.DataFrame], empty: pl.DataFrame) -> pl.DataFrame:
    return pl.concat(frames, how="vertical") if frames else empty
