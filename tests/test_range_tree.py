"""The range tree against brute force, and nesting thousands deep.

The brute force reads the definitions directly: range j encloses range i when both lie on one
thread, j starts no later and ends no sooner, and j comes first in (start, longest first, event
id) order; the parent is the innermost encloser, depth the number of enclosers, the path their
names from the outermost down.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from conftest import make_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from stagemfu import postprocess
from stagemfu.postprocess.tree import PATH_HEAD, PATH_NAMES, enclosing_parent, range_tree


def ranges_frame(rows: list[tuple[int, int, int, str]]) -> pl.DataFrame:
    """``Trace.ranges`` rows from (thread, start, end, name)."""
    return pl.DataFrame(
        {
            "range_id": list(range(1, len(rows) + 1)),
            "domain": [""] * len(rows),
            "name": [r[3] for r in rows],
            "style": ["PushPop"] * len(rows),
            "start": [r[1] for r in rows],
            "end": [r[2] for r in rows],
            "pid": [1] * len(rows),
            "tid": [r[0] for r in rows],
            "end_tid": [None] * len(rows),
        },
        schema={
            "range_id": pl.Int64,
            "domain": pl.Utf8,
            "name": pl.Utf8,
            "style": pl.Utf8,
            "start": pl.Int64,
            "end": pl.Int64,
            "pid": pl.Int64,
            "tid": pl.Int64,
            "end_tid": pl.Int64,
        },
    )


def brute_force(tree: pl.DataFrame) -> tuple[list[int], list[int], list[str], list[set[int]]]:
    """Parent, depth, path and the set of enclosing rids of every range, in rid order."""
    rows = tree.select("tid", "start_ns", "end_ns", "name").rows()
    parents, depths, chain, enclosing = [], [], [], []
    tail = PATH_NAMES - PATH_HEAD
    for i, (tid, start, end, name) in enumerate(rows):
        enclosers = [j for j in range(i) if rows[j][0] == tid and rows[j][1] <= start and end <= rows[j][2]]
        parents.append(max(enclosers, default=-1))
        depths.append(len(enclosers))
        chain.append(([] if parents[-1] < 0 else chain[parents[-1]]) + [name])
        enclosing.append(set(enclosers))
    paths = [
        "/".join(c if len(c) <= PATH_NAMES else [*c[:PATH_HEAD], f"(… {len(c) - PATH_NAMES} more …)", *c[-tail:]])
        for c in chain
    ]
    return parents, depths, paths, enclosing


@st.composite
def nests(draw: st.DrawFn) -> list[tuple[int, int, int, str]]:
    rows = []
    for _ in range(draw(st.integers(0, 40))):
        start = draw(st.integers(0, 30))
        rows.append((draw(st.integers(1, 3)), start, start + draw(st.integers(0, 12)), draw(st.sampled_from("abc"))))
    return rows


@settings(max_examples=300, deadline=None)
@given(nests())
def test_parent_depth_and_path_equal_brute_force(rows):
    tree = range_tree(ranges_frame(rows)).ranges
    parents, depths, paths, _ = brute_force(tree)
    assert tree["parent_rid"].fill_null(-1).to_list() == parents
    assert tree["depth"].to_list() == depths
    assert tree["path"].to_list() == paths
    same_path = tree.group_by("path").agg(pl.col("path_id").n_unique())
    assert same_path["path_id"].to_list() == [1] * same_path.height  # one id per path...
    assert tree["path_id"].n_unique() == tree["path"].n_unique()  # ...and one path per id


@settings(max_examples=200, deadline=None)
@given(nests(), st.sets(st.integers(0, 39)))
def test_within_keeps_the_anchors_and_everything_they_enclose(rows, marked):
    tree = range_tree(ranges_frame(rows))
    anchors = [rid in marked for rid in range(tree.ranges.height)]
    _, _, _, enclosing = brute_force(tree.ranges)
    expected = [anchors[i] or any(anchors[j] for j in enclosing[i]) for i in range(len(anchors))]
    assert tree.within(pl.Series(anchors, dtype=pl.Boolean).to_numpy()).tolist() == expected


def test_crossing_start_end_ranges_do_not_enclose_each_other():
    # b starts inside a and ends after it: neither encloses the other; c lies in both.
    tree = range_tree(ranges_frame([(1, 0, 10, "a"), (1, 5, 15, "b"), (1, 6, 9, "c")]))
    assert tree.ranges["parent_rid"].to_list() == [None, None, 1]
    assert tree.ranges["path"].to_list() == ["a", "b", "b/c"]  # the path follows the innermost
    assert tree.ranges["depth"].to_list() == [0, 0, 2]  # the depth counts both
    assert tree.within(pl.Series([True, False, False]).to_numpy()).tolist() == [True, False, True]


def test_ten_thousand_nested_ranges_with_long_names_keep_paths_short():
    depth, name = 10_000, "layer-" + "x" * 200
    rows = [(1, i, 2 * depth - i, f"{name}{i}") for i in range(depth)]
    tree = range_tree(ranges_frame(rows)).ranges
    assert tree["depth"].to_list() == list(range(depth))
    assert tree["parent_rid"].fill_null(-1).to_list() == list(range(-1, depth - 1))
    assert tree["path_id"].n_unique() == depth
    # The text of a path holds PATH_NAMES names at most, so memory stays linear in the ranges.
    longest = max(len(f"{name}{i}") for i in range(depth)) + 1
    assert tree["path"].str.len_chars().max() <= PATH_NAMES * longest + 40
    deepest = tree["path"][-1].split("/")
    assert deepest[:PATH_HEAD] == [f"{name}{i}" for i in range(PATH_HEAD)]
    assert deepest[PATH_HEAD] == f"(… {depth - PATH_NAMES:,} more …)".replace(",", "")
    assert deepest[PATH_HEAD + 1 :] == [f"{name}{i}" for i in range(depth - PATH_NAMES + PATH_HEAD, depth)]


def test_deep_nesting_through_the_whole_pipeline(tmp_path):
    depth = 3_000
    ranges = [{"start": i, "end": 2 * depth - i, "text": f"r{i}"} for i in range(depth)]
    calls = [{"start": depth - 1, "end": depth - 1, "correlationId": 1}]
    kernels = [{"start": 10 * depth, "end": 10 * depth + 7, "correlationId": 1}]
    st_ = postprocess.load(make_trace(tmp_path, ranges=ranges, calls=calls, kernels=kernels))
    assert st_.instances["kernel_ns"].to_list() == [7] * depth  # the one kernel counts in every range
    assert st_.instances["exclusive_busy_ns"].sum() == 7
    assert st_.paths.height == depth


def test_enclosing_parent_of_nothing_and_of_one():
    assert [a.size for a in enclosing_parent(np.zeros(0, dtype=np.int64))] == [0, 0]
    assert [a.tolist() for a in enclosing_parent(np.array([0]))] == [[-1], [0]]
