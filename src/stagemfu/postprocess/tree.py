"""The NVTX range tree: which closed range encloses which, each range's depth and path.

Everything here costs time and memory in proportion to the number of ranges (times a
logarithm), however deep the nesting: a program that pushes a range in a loop makes a chain
thousands of ranges deep, and a tree built from (ancestor, descendant) pairs would hold the
square of that. So nesting is found as one parent and one count of enclosing ranges per range
(:func:`enclosing_parent`), "nested in a range called X" as a running maximum
(:func:`enclosed_by`), and paths follow parent links by pointer doubling, each step a numpy
gather over all ranges at once.

A path is kept as a number per distinct sequence of names (:func:`path_ids`), and its text is
built once per distinct path. A path deeper than ``PATH_NAMES`` names is shown with its first
and last names around a count of the ones left out, so the text of every path is bounded by
the names of its range and a few ancestors, never by the depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from stagemfu.postprocess.intervals import valid_interval

PATH_NAMES = 16  # names shown in a path at most; deeper paths keep the first and the last ones
PATH_HEAD = PATH_NAMES // 2


@dataclass(frozen=True)
class RangeTree:
    """Closed NVTX range instances with their nesting.

    Attributes
    ----------
    ranges
        One row per closed range, ordered by ``rid`` (thread, start, longest first): ``rid``,
        ``range_id``, ``domain``, ``name``, ``style``, ``pid``, ``tid``, ``thread`` (a dense
        number per (pid, tid), in rid order), ``start_ns``, ``end_ns``, ``wall_ns``,
        ``same_thread``, ``depth`` (how many ranges enclose
        it), ``parent_rid`` (the innermost enclosing range on the same thread, null at the top),
        ``path_id`` (one number per distinct path) and ``path`` (the names from the top down along
        the parents, joined by "/", see ``PATH_NAMES``). Where start/end ranges cross, a range
        can lie in two that do not nest: its path then follows the innermost one, and its depth
        counts both.
    notes
        Unclosed, cross-thread and backwards ranges, for the user.
    """

    ranges: pl.DataFrame
    notes: tuple[str, ...]

    def within(self, anchors: np.ndarray) -> np.ndarray:
        """For every rid, whether it is one of the ``anchors`` (a boolean mask by rid) or nested in one."""
        return enclosed_by(nesting_rank(self.ranges["thread"].to_numpy(), self.ranges["end_ns"].to_numpy()), anchors)


def range_tree(ranges: pl.DataFrame) -> RangeTree:
    """Closed ranges in rid order with depth, parent and path (see :class:`RangeTree`).

    Parameters
    ----------
    ranges
        ``Trace.ranges`` (:data:`stagemfu.postprocess.trace.RANGES_SCHEMA`).
    """
    notes: list[str] = []
    closed = _closed_ranges(ranges, notes)
    parent, depth = enclosing_parent(nesting_rank(closed["thread"].to_numpy(), closed["end_ns"].to_numpy()))
    ids = path_ids(parent, closed["name"].rank("dense").cast(pl.Int64).to_numpy())
    text = path_text(parent, chain_lengths(parent), ids, closed["name"])
    tree = closed.with_columns(
        depth=pl.Series(depth, dtype=pl.Int64),
        parent_rid=pl.Series(parent, dtype=pl.Int64).replace(-1, None),
        path_id=pl.Series(ids, dtype=pl.Int64),
        path=text,
    )
    return RangeTree(tree, tuple(notes))


def nesting_rank(thread: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Dense rank of (thread, end): with ranges sorted by (thread, start, end descending), range j
    encloses a later range i exactly when ``rank[j] >= rank[i]`` (a range of an earlier thread
    always ranks lower, so the thread needs no test of its own)."""
    n = len(end)
    order = np.lexsort((end, thread))
    key_thread, key_end = thread[order], end[order]
    change = np.concatenate([[False], (key_thread[1:] != key_thread[:-1]) | (key_end[1:] != key_end[:-1])])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.cumsum(change)
    return rank


def enclosing_parent(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The innermost enclosing range of each range on its thread (an index, -1: none), and how
    many ranges enclose it.

    ``rank`` is :func:`nesting_rank` of ranges in rid order: the ranges enclosing range i are
    the earlier ones with a rank at least its own, and the innermost is the nearest of those:
    the "previous greater or equal element" that a stack sweep finds. Here it is found for all
    ranges at once by halving: at each level the ranges are cut into blocks of 2^(k+1), and every
    range in a block's second half looks at the block's first half: the nearest range there
    whose rank is at least its own, by a binary search in the first half's running maximum of
    ranks taken from its last range backwards (which never increases), and how many there are,
    by a binary search in the first half's sorted ranks. Over all levels those first halves
    partition the ranges before i, so the nearest candidate is the parent and the counts add up
    to the depth. log2(n) levels of linear numpy work and one sort each; memory stays a few
    arrays of n.
    """
    n = len(rank)
    parent = np.full(n, -1, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    index = np.arange(n, dtype=np.int64)
    half = 1
    while half < n:
        block = index // (2 * half)
        first = (index % (2 * half)) < half
        left, left_block = index[first], block[first]
        right, right_block = index[~first], block[~first]
        blocks = int(block[-1]) + 1
        offset = (blocks - left_block) * n  # grows from the last block to the first: each half's maximum starts afresh
        reach = (np.maximum.accumulate((rank[left] + offset)[::-1]) - offset[::-1])[::-1]
        keys = left_block * (n + 1) + (n - reach)  # ascending: by block, then by position in the block
        at = np.searchsorted(keys, right_block * (n + 1) + (n - rank[right]), side="right") - 1
        hit = (at >= 0) & (left_block[np.maximum(at, 0)] == right_block)
        parent[right[hit]] = np.maximum(parent[right[hit]], left[at[hit]])
        ranked = np.sort(left_block * (n + 1) + rank[left])  # by block, then by rank
        count[right] += np.searchsorted(ranked, (right_block + 1) * (n + 1), side="left") - np.searchsorted(
            ranked, right_block * (n + 1) + rank[right], side="left"
        )
        half *= 2
    return parent, count


def enclosed_by(rank: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """For each range (rid order), whether it is one of the ``anchors`` or an anchor encloses it:
    the highest rank among the anchors before it reaches its own (:func:`nesting_rank`)."""
    if not len(rank):
        return np.zeros(0, dtype=bool)
    best = np.maximum.accumulate(np.where(anchors, rank, -1))
    before = np.concatenate([[-1], best[:-1]])
    return anchors | (before >= rank)


def chain_lengths(parent: np.ndarray) -> np.ndarray:
    """Number of ancestors of each node (its depth), by pointer doubling: log2(depth) gathers."""
    length = (parent >= 0).astype(np.int64)
    jump = parent.copy()
    while (jump >= 0).any():
        up = jump >= 0
        length = length + np.where(up, length[np.maximum(jump, 0)], 0)
        jump = np.where(up, jump[np.maximum(jump, 0)], -1)
    return length


def nearest_marked(parent: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """For each node, ``mark`` of the nearest node at or above it whose mark is not -1 (-1 when none)."""
    found = mark.copy()
    jump = parent.copy()
    while ((found < 0) & (jump >= 0)).any():
        up = (found < 0) & (jump >= 0)
        found = np.where(up, found[np.maximum(jump, 0)], found)
        jump = np.where(jump >= 0, jump[np.maximum(jump, 0)], -1)
    return found


def path_ids(parent: np.ndarray, name: np.ndarray) -> np.ndarray:
    """One number per distinct path (sequence of names from the root): equal numbers, equal paths.

    Prefix doubling, as suffix arrays are built: after round r a node's label stands for the
    names of the node and its 2^r - 1 nearest ancestors (fewer at the root, which the label
    then records); pairing the label with that of the ancestor 2^r up doubles the reach. The
    labels are renumbered densely each round (one sort), so they stay below the node count and
    a (label, label above) pair fits one int64.
    """
    label = name.astype(np.int64)
    jump = parent.copy()
    while True:
        up = jump >= 0
        above = np.where(up, label[np.maximum(jump, 0)], -1)
        pairs = label * (int(label.max(initial=0)) + 2) + (above + 1)
        label = np.unique(pairs, return_inverse=True)[1].astype(np.int64).ravel()
        if not up.any():
            return label
        jump = np.where(up, jump[np.maximum(jump, 0)], -1)


def path_text(parent: np.ndarray, depth: np.ndarray, ids: np.ndarray, names: pl.Series) -> pl.Series:
    """The path of every node as text, built once per distinct path (see ``PATH_NAMES``).

    A path of up to ``PATH_NAMES`` names is built level by level from its parent's text; a
    deeper one is its ancestor's text at depth ``PATH_HEAD - 1``, a count of the names left
    out, and its last ``PATH_NAMES - PATH_HEAD`` names.
    """
    if len(ids) == 0:
        return pl.Series("path", [], dtype=pl.Utf8)
    first = np.unique(ids, return_index=True)[1]  # one node per distinct path
    text = pl.Series("path", [None] * len(ids), dtype=pl.Utf8)
    shallow = first[depth[first] < PATH_NAMES]
    for level in range(min(int(depth[first].max()), PATH_NAMES - 1) + 1):
        rows = shallow[depth[shallow] == level]
        own = names.gather(rows)
        if level:
            own = pl.select(pl.concat_str([text.gather(ids[parent[rows]]), pl.lit("/"), own])).to_series()
        text = text.scatter(ids[rows], own)
    deep = first[depth[first] >= PATH_NAMES]
    if len(deep):
        head = nearest_marked(parent, np.where(depth == PATH_HEAD - 1, np.arange(len(depth)), -1))[deep]
        tail, hop = [], deep
        for _ in range(PATH_NAMES - PATH_HEAD):
            tail.append(names.gather(hop))
            hop = parent[hop]
        skipped = pl.Series(depth[deep] + 1 - PATH_NAMES).cast(pl.Utf8)
        marker = pl.select(pl.concat_str([pl.lit("(… "), pl.lit(skipped), pl.lit(" more …)")])).to_series()
        parts = [text.gather(ids[head]), marker, *reversed(tail)]
        text = text.scatter(ids[deep], pl.select(pl.concat_str(parts, separator="/")).to_series())
    return text.gather(ids).alias("path")


def _closed_ranges(ranges: pl.DataFrame, notes: list[str]) -> pl.DataFrame:
    """Closed ranges, in (thread, start, longest first) order, with a dense ``rid`` in that order.

    That order puts every range after the ranges enclosing it on its thread, so the nearest
    earlier range of its thread that ends no sooner is the innermost one enclosing it. Ranges
    that end before they start (a damaged record, or clocks that disagree) are left out with
    a note: they have no wall time to report.
    """
    unclosed = ranges.filter(pl.col("end").is_null()).height
    if unclosed:
        notes.append(f"{unclosed} NVTX range(s) never ended (the capture stopped inside them); they are left out")
    valid = valid_interval() & pl.col("pid").is_not_null() & pl.col("tid").is_not_null()
    damaged = ranges.filter(pl.col("end").is_not_null() & ~valid).height
    if damaged:
        notes.append(
            f"{damaged} NVTX range(s) end before they start, or have no start, no thread or impossible times "
            "(damaged records, or clocks that disagree); they are left out"
        )
    other_thread = pl.col("end_tid").is_not_null() & (pl.col("end_tid") != pl.col("tid"))
    cross = ranges.filter(other_thread).height
    if cross:
        notes.append(
            f"{cross} start/end range(s) ended on another thread: wall time only, no GPU work is "
            "attributed to them (as in nsys)"
        )
    ordered = ranges.filter(valid).sort(
        ["pid", "tid", "start", "end", "range_id"], descending=[False, False, False, True, False]
    )
    new_thread = (pl.col("pid") != pl.col("pid").shift()) | (pl.col("tid") != pl.col("tid").shift())
    return ordered.with_row_index("rid").select(
        pl.col("rid").cast(pl.Int64),
        "range_id",
        "domain",
        "name",
        "style",
        "pid",
        "tid",
        new_thread.fill_null(False).cum_sum().cast(pl.Int64).alias("thread"),
        pl.col("start").alias("start_ns"),
        pl.col("end").alias("end_ns"),
        (pl.col("end") - pl.col("start")).alias("wall_ns"),
        (~other_thread).alias("same_thread"),
    )
