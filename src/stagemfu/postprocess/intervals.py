"""Interval primitives shared by every time base: containment pairs and union length.

Both are written once here and used for ops-in-ranges and ranges-in-ranges alike, so the rule
"an item belongs to a container on the same thread that encloses it" has one implementation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

DEFAULT_CHUNK_ROWS = 4_000_000


def containment_pairs(
    outer_tid: np.ndarray,
    outer_start: np.ndarray,
    outer_end: np.ndarray,
    inner_tid: np.ndarray,
    inner_start: np.ndarray,
    inner_end: np.ndarray,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield every (outer, inner) index pair with the same thread and inner ⊆ outer.

    ``inner ⊆ outer`` means ``outer_start <= inner_start`` and ``inner_end <= outer_end``. The
    inner arrays must be sorted by (tid, start): then the inners of one outer are a contiguous
    slice found by two binary searches per thread, and only the end condition needs a filter.
    Pairs come in chunks of about ``chunk_rows`` (a single outer with more inners comes alone),
    so memory stays bounded however deep the nesting.

    Parameters
    ----------
    outer_tid, outer_start, outer_end
        Containers (NVTX ranges), any order.
    inner_tid, inner_start, inner_end
        Items (runtime calls or ranges), sorted by tid then start.
    chunk_rows
        Target number of candidate pairs per chunk.

    Returns
    -------
    Iterator of ``(outer_index, inner_index)`` int64 arrays of equal length.
    """
    lo, hi = _slices(outer_tid, outer_start, outer_end, inner_tid, inner_start)
    lengths = hi - lo
    if lengths.sum() == 0:
        return
    cum = np.cumsum(lengths)
    bounds = np.unique(np.searchsorted(cum, np.arange(chunk_rows, cum[-1], chunk_rows), side="left") + 1)
    for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(lengths)]])):
        if a >= b:
            continue
        n = lengths[a:b]
        total = int(n.sum())
        if total == 0:
            continue
        outer_idx = np.repeat(np.arange(a, b, dtype=np.int64), n)
        first = np.repeat(np.cumsum(n) - n, n)
        inner_idx = np.arange(total, dtype=np.int64) - first + np.repeat(lo[a:b], n)
        keep = inner_end[inner_idx] <= outer_end[outer_idx]
        yield outer_idx[keep], inner_idx[keep]


def _slices(
    outer_tid: np.ndarray, outer_start: np.ndarray, outer_end: np.ndarray,
    inner_tid: np.ndarray, inner_start: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For each outer, the slice [lo, hi) of inners on its thread that start inside it."""
    lo = np.zeros(len(outer_tid), dtype=np.int64)
    hi = np.zeros(len(outer_tid), dtype=np.int64)
    if len(inner_tid) == 0 or len(outer_tid) == 0:
        return lo, hi
    tids, first = np.unique(inner_tid, return_index=True)
    last = np.append(first[1:], len(inner_tid))
    group = np.searchsorted(tids, outer_tid)
    group_clipped = np.minimum(group, len(tids) - 1)
    present = tids[group_clipped] == outer_tid
    order = np.argsort(group_clipped, kind="stable")
    sorted_groups = group_clipped[order]
    # One pass per thread, vectorized over that thread's outers.
    for g in np.unique(group_clipped[present]):
        rows = order[np.searchsorted(sorted_groups, g, "left"):np.searchsorted(sorted_groups, g, "right")]
        rows = rows[present[rows]]
        starts = inner_start[first[g]:last[g]]
        lo[rows] = first[g] + np.searchsorted(starts, outer_start[rows], side="left")
        hi[rows] = first[g] + np.searchsorted(starts, outer_end[rows], side="right")
    return lo, np.maximum(hi, lo)


def union_ns(frame: pl.DataFrame, keys: list[str], *, out: str = "busy_ns") -> pl.DataFrame:
    """Length of the union of [start, end) intervals per group: overlaps and gaps removed.

    A sorted sweep: within a group ordered by start, each interval adds only the part that ends
    after every earlier interval has ended.

    Returns
    -------
    polars.DataFrame
        ``keys`` plus ``out`` (Int64 ns); with no keys, one row for the whole frame.
    """
    gain = (pl.col("end") - pl.max_horizontal("start", "_covered")).clip(lower_bound=0).sum().cast(pl.Int64).alias(out)
    if not keys:  # one group: no window needed
        swept = frame.select("start", "end").sort("start").with_columns(pl.col("end").cum_max().shift(1).alias("_covered"))
        return swept.select(gain.fill_null(0))
    if frame.is_empty():
        return frame.select(keys).with_columns(pl.lit(0, pl.Int64).alias(out)).head(0)
    swept = frame.select([*keys, "start", "end"]).sort([*keys, "start"]).with_columns(
        pl.col("end").cum_max().shift(1).over(keys).alias("_covered")
    )
    return swept.group_by(keys).agg(gain)
