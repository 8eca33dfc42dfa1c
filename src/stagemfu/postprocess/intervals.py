"""Interval primitives shared by every time base: containment pairs and union length.

Both are written once here and used for ops-in-ranges and ranges-in-ranges alike, so the rule
"an item belongs to a container on the same thread that encloses it" has one implementation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

DEFAULT_CHUNK_ROWS = 250_000  # pairs per reduction step: 10.5 M kernels took no longer than with 1 M, in 140 MiB less


# Times a trace can hold (ns; about ±73 years around its clock's zero, which covers times since the
# Unix epoch) and the longest interval (about 13 days). Beyond them a record is damaged, and summing
# such values could wrap around int64 and print negative times.
TIME_LIMIT = 1 << 61
DURATION_LIMIT = 1 << 50


def valid_interval(start: str = "start", end: str = "end") -> pl.Expr:
    """True for records whose start and end are present, within ``TIME_LIMIT``, in order and not
    longer than ``DURATION_LIMIT`` (False, never null, otherwise)."""
    s, e = pl.col(start), pl.col(end)
    return ((s.abs() < TIME_LIMIT) & (e.abs() < TIME_LIMIT) & (e >= s) & (e - s < DURATION_LIMIT)).fill_null(False)


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
        owner = repeat_index(n)
        outer_idx = owner + a
        inner_idx = np.arange(total, dtype=np.int64) + (lo[a:b] - (np.cumsum(n) - n))[owner]
        keep = inner_end[inner_idx] <= outer_end[outer_idx]
        yield outer_idx[keep], inner_idx[keep]


def _slices(
    outer_tid: np.ndarray,
    outer_start: np.ndarray,
    outer_end: np.ndarray,
    inner_tid: np.ndarray,
    inner_start: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For each outer, the slice [lo, hi) of inners on its thread that start inside it."""
    lo = np.zeros(len(outer_tid), dtype=np.int64)
    hi = np.zeros(len(outer_tid), dtype=np.int64)
    if len(inner_tid) == 0 or len(outer_tid) == 0:
        return lo, hi
    first = segment_bounds(inner_tid)  # the inners are sorted by tid: no sort needed to group them
    tids = inner_tid[first]
    last = np.append(first[1:], len(inner_tid))
    group = np.searchsorted(tids, outer_tid)
    group_clipped = np.minimum(group, len(tids) - 1)
    present = tids[group_clipped] == outer_tid
    order = np.argsort(group_clipped, kind="stable")
    sorted_groups = group_clipped[order]
    # One pass per thread, vectorized over that thread's outers.
    for g in np.unique(group_clipped[present]):
        rows = order[np.searchsorted(sorted_groups, g, "left") : np.searchsorted(sorted_groups, g, "right")]
        rows = rows[present[rows]]
        starts = inner_start[first[g] : last[g]]
        lo[rows] = first[g] + np.searchsorted(starts, outer_start[rows], side="left")
        hi[rows] = first[g] + np.searchsorted(starts, outer_end[rows], side="right")
    return lo, np.maximum(hi, lo)


def segment_bounds(segment: np.ndarray) -> np.ndarray:
    """Index of the first row of each run of equal values (rows grouped by segment)."""
    if len(segment) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], segment[1:] != segment[:-1]]))


def repeat_index(counts: np.ndarray) -> np.ndarray:
    """``np.repeat(np.arange(len(counts)), counts)``: for each of ``counts.sum()`` rows, the index of its group.

    np.repeat holds the GIL for its whole run, and it was half the GIL time of a chunked load; a
    cumulative sum over group-start marks and a gather release it, so chunks attributed on
    several threads no longer queue for it.
    """
    groups = np.flatnonzero(counts > 0)
    return groups[segment_index((np.cumsum(counts) - counts)[groups], int(counts.sum()))]


def segment_index(bounds: np.ndarray, rows: int) -> np.ndarray:
    """The segment number of each of ``rows`` rows, grouped in segments starting at ``bounds`` (first 0)."""
    marks = np.zeros(rows, dtype=np.int64)
    marks[bounds[1:]] = 1
    return np.cumsum(marks)


def segment_union(bounds: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Length of the union of [start, end) intervals in each segment: overlaps and gaps removed.

    Rows are grouped by segment, segment k starting at ``bounds[k]``. Each segment is shifted onto
    its own stretch of one number line, so one stable sort (near-linear: rows usually come almost
    in time order) and one running maximum serve every segment at once: an interval adds only the
    part that ends after every earlier interval of its segment has ended.

    Returns
    -------
    numpy.ndarray
        One int64 length (ns) per segment.
    """
    if len(bounds) == 0:
        return np.zeros(0, dtype=np.int64)
    lo = np.minimum.reduceat(start, bounds)
    width = np.maximum.reduceat(end, bounds) - lo + 1
    if float(width.sum(dtype=np.float64)) >= 2.0**62 and len(bounds) > 1:
        half = len(bounds) // 2  # shifted coordinates would overflow int64: split the segments
        cut = bounds[half]
        return np.concatenate(
            [
                segment_union(bounds[:half], start[:cut], end[:cut]),
                segment_union(bounds[half:] - cut, start[cut:], end[cut:]),
            ]
        )
    shift = (np.cumsum(width) - width - lo)[segment_index(bounds, len(start))]
    s, e = start + shift, end + shift
    if len(s) > 1 and not bool(np.all(s[1:] >= s[:-1])):
        order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
    covered = np.maximum.accumulate(e)
    before = np.concatenate([[np.iinfo(np.int64).min], covered[:-1]])
    gain = np.maximum(e - np.maximum(s, before), 0)
    return np.add.reduceat(gain, bounds)


def masked_segment_union(bounds: np.ndarray, start: np.ndarray, end: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`segment_union` of only the rows where ``mask`` holds (0 for a segment with none).

    Lets one segmentation answer several questions, e.g. the busy time of a range's communication
    kernels and of its other kernels, without regrouping the rows.
    """
    out = np.zeros(len(bounds), dtype=np.int64)
    segment = segment_index(bounds, len(start))[mask]
    if len(segment):
        sub = segment_bounds(segment)
        out[segment[sub]] = segment_union(sub, start[mask], end[mask])
    return out


def union_length(start: np.ndarray, end: np.ndarray) -> int:
    """Length of the union of [start, end) intervals, any row order (sorted first if need be)."""
    if len(start) == 0:
        return 0
    if len(start) > 1 and not bool(np.all(start[1:] >= start[:-1])):
        order = np.argsort(start, kind="stable")  # near-linear on almost ordered rows
        start, end = start[order], end[order]
    covered = np.maximum.accumulate(end)
    gain = end[1:] - np.maximum(start[1:], covered[:-1])
    return max(int(end[0] - start[0]), 0) + int(np.maximum(gain, 0).sum())


def group_union(keys: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union length of intervals per key, any row order.

    Returns
    -------
    (keys, lengths)
        The distinct keys in ascending order and the union length (ns) of each.
    """
    order = np.argsort(keys, kind="stable")
    keys, start, end = keys[order], start[order], end[order]
    bounds = segment_bounds(keys)
    return keys[bounds], segment_union(bounds, start, end)
