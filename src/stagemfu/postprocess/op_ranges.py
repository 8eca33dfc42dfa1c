"""Where each aten op range of a trace sits: the op ranges around it, the stage instances it counts
for, and the kernels it launched. Pure numpy/polars over the trace's frames.

A trace recorded under ``emit_nvtx`` holds two kinds of NVTX ranges: the user's stages (``step``,
``forward``, ``optimizer``, any domain) and one op range per aten op (:mod:`.op_shapes`). Op
ranges are not stages: they are split off here, so the stage times are computed over the stage
ranges alone (millions of op ranges, nearly all named differently, would otherwise each become a
stage), and the ops are tied to the stages by the rules the GPU work follows:

- an op counts for every stage instance enclosing it on its thread;
- an op on another thread than its process's main thread (PyTorch runs backward on its autograd
  thread) also counts for the main-thread stage instances open when it started, as GPU work does
  under ``--launches process`` (:func:`stagemfu.postprocess.attribution.attribute`);
- a kernel belongs to the innermost op range around its launching call, on the launching thread.

Ranges ended on another thread than their start, or never ended, are left out (they get no GPU
work either).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS, containment_pairs
from stagemfu.postprocess.op_shapes import is_op_range, op_name
from stagemfu.postprocess.threads import main_thread, packed_thread
from stagemfu.postprocess.trace import KERNEL_KINDS, Trace


@dataclass(frozen=True)
class OpRanges:
    """The op ranges of a trace and how they relate to its stages and kernels.

    Attributes
    ----------
    ops
        One row per closed op range, in (thread, start, longest first) order so that an op range
        comes after those enclosing it: ``op_row`` (0, 1, ...: the row's index), ``range_id``,
        ``op`` (``aten::mm``), ``name`` (the whole range name), ``thread`` (see
        :func:`stagemfu.postprocess.threads.packed_thread`), ``start_ns``,
        ``end_ns``, ``kernels`` and ``kernel_ns`` (the kernels whose innermost op range it is).
    nesting
        ``outer``, ``inner``: every (enclosing op range, enclosed op range) pair of ``op_row``.
    stages
        ``range_id`` (a stage instance: a non-op range), ``op_row``: every op range counted for a
        stage instance, by the rules in the module docstring.
    stage_ranges
        The trace's ranges that are not op ranges (all of them, closed or not), as the reader
        gave them: the frame to compute stage times from.
    stage_nesting
        ``outer``, ``inner``: every (enclosing, enclosed) pair of stage instances (``range_id``).
    unrecorded
        ``range_id``, ``kernels``: per stage instance, the kernels it launched (by the same rules
        as ops) outside every op range: work run without ``emit_nvtx``, such as a plain step.
    """

    ops: pl.DataFrame
    nesting: pl.DataFrame
    stages: pl.DataFrame
    stage_ranges: pl.DataFrame
    stage_nesting: pl.DataFrame
    unrecorded: pl.DataFrame


PAIRS_SCHEMA = {"outer": pl.Int64, "inner": pl.Int64}


def op_ranges(trace: Trace, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> OpRanges:
    """Split the op ranges off ``trace.ranges`` and relate them to the stages and the kernels.

    Parameters
    ----------
    trace
        A trace whose operations are held in memory (read without ``chunk_ops``): they give the
        kernels.
    chunk_rows
        Bound on the containment pairs made at once.

    Returns
    -------
    OpRanges
    """
    ranges = trace.ranges.with_columns(thread=packed_thread("pid", "tid"))
    op_mask = ranges.select(is_op_range()).to_series()
    closed = pl.col("end").is_not_null() & (pl.col("end_tid").is_null() | (pl.col("end_tid") == pl.col("tid")))
    ops = (
        ranges.filter(op_mask & closed)
        .sort(["thread", "start", "end", "range_id"], descending=[False, False, True, False])
        .select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("op_row"),
            "range_id",
            op_name().alias("op"),
            "name",
            "thread",
            pl.col("start").alias("start_ns"),
            pl.col("end").alias("end_ns"),
        )
    )
    tid, start, end = (ops[c].to_numpy() for c in ("thread", "start_ns", "end_ns"))
    nesting = _pairs(containment_pairs(tid, start, end, tid, start, end, chunk_rows=chunk_rows), drop_self=True)
    stage_ranges = ranges.filter(~op_mask)
    closed_stages = stage_ranges.filter(closed).sort("thread", "start")
    stage_ranges = stage_ranges.drop("thread")
    stages = _stage_pairs(closed_stages, tid, start, chunk_rows)
    held = trace.ops.held
    if held is None:
        raise ValueError("op_ranges needs a trace whose operations are held in memory (read without chunk_ops)")
    kernels = _launches(held)
    k_tid, k_start = kernels["thread"].to_numpy(), kernels["call_start"].to_numpy()
    innermost = _innermost_op(kernels, tid, start, end, chunk_rows)
    per_op = (
        kernels.select(pl.Series("op_row", innermost), "ns")
        .filter(pl.col("op_row") >= 0)
        .group_by("op_row")
        .agg(pl.len().cast(pl.Int64).alias("kernels"), pl.col("ns").sum().alias("kernel_ns"))
    )
    ops = ops.join(per_op, on="op_row", how="left").with_columns(pl.col("kernels", "kernel_ns").fill_null(0))
    outside = np.flatnonzero(innermost < 0)
    unrecorded = (
        _stage_pairs(closed_stages, k_tid[outside], k_start[outside], chunk_rows)
        .group_by("range_id")
        .agg(pl.len().cast(pl.Int64).alias("kernels"))
    )
    s_tid, s_start, s_end = (closed_stages[c].to_numpy() for c in ("thread", "start", "end"))
    s_id = closed_stages["range_id"].to_numpy()
    pairs = _pairs(
        containment_pairs(s_tid, s_start, s_end, s_tid, s_start, s_end, chunk_rows=chunk_rows), drop_self=True
    )
    stage_nesting = pl.DataFrame(
        {"outer": s_id[pairs["outer"].to_numpy()], "inner": s_id[pairs["inner"].to_numpy()]}, schema=PAIRS_SCHEMA
    )
    return OpRanges(
        ops=ops,
        nesting=nesting,
        stages=stages,
        stage_ranges=stage_ranges,
        stage_nesting=stage_nesting,
        unrecorded=unrecorded,
    )


def _pairs(chunks, *, drop_self: bool = False) -> pl.DataFrame:
    frames = []
    for outer, inner in chunks:
        keep = outer != inner if drop_self else slice(None)
        frames.append(pl.DataFrame({"outer": outer[keep], "inner": inner[keep]}, schema=PAIRS_SCHEMA))
    return pl.concat(frames) if frames else pl.DataFrame(schema=PAIRS_SCHEMA)


def _stage_pairs(stages: pl.DataFrame, tid: np.ndarray, start: np.ndarray, chunk_rows: int) -> pl.DataFrame:
    """(stage instance ``range_id``, item index) pairs for items (op ranges, launching calls) that
    start at ``start`` on thread ``tid``, sorted by (thread, start): the stage encloses the item's
    start on its thread, or is open on its process's main thread when the item started on another.

    Containment is decided by the start alone: push/pop ranges of one thread nest properly, so an
    op starting inside a stage ends in it.
    """
    s_id, s_tid, s_start, s_end = (stages[c].to_numpy() for c in ("range_id", "thread", "start", "end"))
    stage_index, op_row = [], []
    for outer, inner in containment_pairs(s_tid, s_start, s_end, tid, start, start, chunk_rows=chunk_rows):
        stage_index.append(outer)
        op_row.append(inner)
    main = main_thread(tid)
    off = np.flatnonzero(tid != main)
    if len(off):
        order = off[np.lexsort((start[off], main[off]))]
        on_main = np.flatnonzero(s_tid == main_thread(s_tid))
        for outer, inner in containment_pairs(
            s_tid[on_main],
            s_start[on_main],
            s_end[on_main],
            main[order],
            start[order],
            start[order],
            chunk_rows=chunk_rows,
        ):
            stage_index.append(on_main[outer])
            op_row.append(order[inner])
    if not stage_index:
        return pl.DataFrame(schema={"range_id": pl.Int64, "op_row": pl.Int64})
    return pl.DataFrame(
        {"range_id": s_id[np.concatenate(stage_index)], "op_row": np.concatenate(op_row)},
        schema={"range_id": pl.Int64, "op_row": pl.Int64},
    )


def _launches(gpu_ops: pl.DataFrame) -> pl.DataFrame:
    """The kernels with a launching call, sorted by (thread, call start): ``thread``, ``call_start``,
    ``call_end``, ``ns`` (duration)."""
    return (
        gpu_ops.filter(pl.col("kind").is_in(KERNEL_KINDS) & pl.col("call_start").is_not_null())
        .select(
            packed_thread("pid", "tid").alias("thread"),
            "call_start",
            "call_end",
            (pl.col("end") - pl.col("start")).alias("ns"),
        )
        .sort("thread", "call_start")
    )


def _innermost_op(
    kernels: pl.DataFrame, tid: np.ndarray, start: np.ndarray, end: np.ndarray, chunk_rows: int
) -> np.ndarray:
    """For each kernel, the innermost op range around its launching call on its thread, or -1."""
    innermost = np.full(kernels.height, -1, dtype=np.int64)
    if kernels.is_empty() or len(tid) == 0:
        return innermost
    k_tid, k_start, k_end = (kernels[c].to_numpy() for c in ("thread", "call_start", "call_end"))
    for outer, inner in containment_pairs(tid, start, end, k_tid, k_start, k_end, chunk_rows=chunk_rows):
        np.maximum.at(innermost, inner, outer)  # op rows in nesting order: the largest is the innermost
    return innermost
