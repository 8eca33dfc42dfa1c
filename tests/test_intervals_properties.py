"""Property tests: the interval primitives and the whole pipeline against brute force.

The brute force is a direct reading of ARCHITECTURE.md's definitions: an op belongs to range R
when the CUDA call that launched it lies inside R on R's thread (ends included), span is last
op end minus first op start, busy is the length of the union of the op intervals (measured on a
boolean timeline), kernel is the sum of kernel durations, gpu_ops counts distinct correlation
ids, exclusive busy is the busy of the ops whose innermost enclosing range is R.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from conftest import gtid, make_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagemfu import postprocess
from stagemfu.postprocess.intervals import (
    containment_pairs,
    group_union,
    repeat_index,
    segment_union,
    union_length,
)

TIMELINE = 80  # GPU op coordinates stay below this, so a boolean array measures unions exactly
PIPELINE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# containment_pairs, segment_union and group_union


@st.composite
def containers_and_items(draw):
    n_out = draw(st.integers(0, 12))
    n_in = draw(st.integers(0, 20))
    tids = st.integers(1, 3)

    def interval():
        a = draw(st.integers(0, 30))
        return a, a + draw(st.integers(0, 12))

    outer = [(draw(tids), *interval()) for _ in range(n_out)]
    inner = sorted((draw(tids), *interval()) for _ in range(n_in))  # sorted by (tid, start)
    return outer, inner


def _arrays(rows):
    a = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return a[:, 0], a[:, 1], a[:, 2]


@settings(max_examples=300, deadline=None)
@given(containers_and_items(), st.integers(1, 7))
def test_containment_pairs_equal_brute_force(data, chunk_rows):
    outer, inner = data
    expected = sorted(
        (i, j)
        for i, (ot, os, oe) in enumerate(outer)
        for j, (it, is_, ie) in enumerate(inner)
        if ot == it and os <= is_ and ie <= oe
    )
    got = []
    for o, n in containment_pairs(*_arrays(outer), *_arrays(inner), chunk_rows=chunk_rows):
        assert len(o) == len(n)
        got.extend(zip(o.tolist(), n.tolist()))
    assert sorted(got) == expected  # every pair once, none missing, none extra


def test_containment_pairs_include_both_ends():
    pairs = list(containment_pairs(*_arrays([(1, 10, 20)]), *_arrays([(1, 9, 20), (1, 10, 20), (1, 10, 21)])))
    got = sorted(zip(np.concatenate([p[0] for p in pairs]).tolist(), np.concatenate([p[1] for p in pairs]).tolist()))
    assert got == [(0, 1)]  # same start and same end count as inside; one ns more does not


def test_containment_pairs_of_nothing_yield_nothing():
    empty = np.array([], dtype=np.int64)
    assert list(containment_pairs(empty, empty, empty, empty, empty, empty)) == []
    assert list(containment_pairs(*_arrays([(1, 0, 5)]), empty, empty, empty)) == []


def brute_union(intervals) -> int:
    covered = np.zeros(TIMELINE, dtype=bool)
    for a, b in intervals:
        covered[a:b] = True
    return int(covered.sum())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60), st.integers(0, 15)), max_size=25))
def test_group_union_equals_boolean_timeline(rows):
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    start = np.array([r[1] for r in rows], dtype=np.int64)
    end = start + np.array([r[2] for r in rows], dtype=np.int64)
    got_keys, got = group_union(keys, start, end)
    expected = {k: brute_union([(s, s + d) for kk, s, d in rows if kk == k]) for k in {r[0] for r in rows}}
    assert dict(zip(got_keys.tolist(), got.tolist())) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 15)), max_size=25), st.booleans())
def test_union_length_equals_boolean_timeline(rows, ordered):
    rows = sorted(rows) if ordered else rows  # sorted input skips the sort: both paths
    start = np.array([s for s, _ in rows], dtype=np.int64)
    end = start + np.array([d for _, d in rows], dtype=np.int64)
    assert union_length(start, end) == brute_union([(s, s + d) for s, d in rows])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 15)), min_size=1, max_size=8), max_size=6))
def test_segment_union_keeps_segments_apart(segments):
    """Contiguous segments, each unsorted inside: one union per segment, none leaking into the next."""
    bounds = (
        np.cumsum([0] + [len(seg) for seg in segments[:-1]]).astype(np.int64) if segments else np.zeros(0, np.int64)
    )
    start = np.array([s for seg in segments for s, _ in seg], dtype=np.int64)
    end = start + np.array([d for seg in segments for _, d in seg], dtype=np.int64)
    got = segment_union(bounds, start, end).tolist()
    assert got == [brute_union([(s, s + d) for s, d in seg]) for seg in segments]


@given(st.lists(st.integers(0, 4), max_size=12))
def test_repeat_index_equals_numpy_repeat(counts):
    """Empty groups anywhere (first, last, runs of them) take no rows."""
    counts = np.array(counts, dtype=np.int64)
    assert repeat_index(counts).tolist() == np.repeat(np.arange(len(counts)), counts).tolist()


def test_group_union_removes_overlaps_and_gaps():
    keys, busy = group_union(np.zeros(4, np.int64), np.array([0, 5, 2, 20]), np.array([10, 8, 12, 25]))
    assert keys.tolist() == [0] and busy.tolist() == [17]


# --------------------------------------------------------------------------------------------
# Whole pipeline through make_trace


@dataclass
class Op:
    corr: int
    tid: int
    call_start: int
    call_end: int
    kind: str
    start: int
    end: int


@dataclass
class Range:
    id: int
    tid: int
    name: str
    start: int
    end: int = -1


@dataclass
class Synthetic:
    ranges: list[Range] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)


@st.composite
def workloads(draw, *, serial: bool = False):
    """Properly nested push/pop ranges on 1-3 threads, launches inside and outside them.

    Each launch is one call and 1-2 ops sharing its correlation id (as graph nodes do) on one
    of two streams; ops overlap freely unless ``serial``, where they never overlap in time.
    Calls may start exactly at a push and end exactly at a pop (containment includes ends).
    """
    syn = Synthetic()
    corr = 0
    gpu_clock = 0
    for tid in range(1, draw(st.integers(1, 3)) + 1):
        t = 0
        stack: list[Range] = []
        for action in draw(
            st.lists(st.sampled_from(["push", "push", "pop", "launch", "launch"]), min_size=3, max_size=14)
        ):
            if action == "push":
                t += draw(st.integers(1, 3))
                rng = Range(len(syn.ranges) + 1, tid, draw(st.sampled_from("abc")), t)
                syn.ranges.append(rng)
                stack.append(rng)
            elif action == "pop" and stack:
                t += draw(st.integers(0, 2))
                stack.pop().end = t
                t += 1  # a later push never starts where a range ended
            elif action == "launch":
                corr += 1
                t += draw(st.integers(0, 2))
                call_start, t = t, t + draw(st.integers(0, 2))
                for _ in range(draw(st.integers(1, 2))):
                    kind = draw(st.sampled_from(["kernel", "kernel", "memcpy", "memset"]))
                    if serial:
                        start = gpu_clock + draw(st.integers(0, 1))
                        end = start + draw(st.integers(0, 2))
                        gpu_clock = end
                    else:
                        start = draw(st.integers(0, 60))
                        end = start + draw(st.integers(0, 15))
                    syn.ops.append(Op(corr, tid, call_start, t, kind, start, end))
        while stack:
            t += 1
            stack.pop().end = t
            t += 1
    if serial:
        assert max([o.end for o in syn.ops], default=0) < TIMELINE
    return syn


def write(syn: Synthetic, directory: Path) -> Path:
    calls, kernels, memcpys, memsets = [], [], [], []
    seen = set()
    for o in syn.ops:
        if o.corr not in seen:
            seen.add(o.corr)
            calls.append({"start": o.call_start, "end": o.call_end, "correlationId": o.corr, "tid": o.tid})
        row = {"start": o.start, "end": o.end, "correlationId": o.corr, "streamId": 7 + o.corr % 2}
        {"kernel": kernels, "memcpy": memcpys, "memset": memsets}[o.kind].append(
            {**row, "name": f"k{o.corr % 3}"} if o.kind == "kernel" else row
        )
    ranges = [{"start": r.start, "end": r.end, "text": r.name, "tid": r.tid} for r in syn.ranges]
    return make_trace(directory, ranges=ranges, kernels=kernels, calls=calls, memcpys=memcpys, memsets=memsets)


def _key(r: Range):
    return (r.tid, r.start, -r.end, r.id)


def encloses(outer: Range, inner: Range) -> bool:
    return (
        outer.tid == inner.tid and outer.start <= inner.start and inner.end <= outer.end and _key(outer) < _key(inner)
    )


def contains_call(r: Range, o: Op) -> bool:
    return r.tid == o.tid and r.start <= o.call_start and o.call_end <= r.end


def brute_force(syn: Synthetic) -> dict[int, dict]:
    """Per range id: the ARCHITECTURE.md numbers computed the slow, obvious way."""
    innermost = {}
    for i, o in enumerate(syn.ops):
        holders = [r for r in syn.ranges if contains_call(r, o)]
        innermost[i] = max(holders, key=_key).id if holders else None
    out = {}
    for r in syn.ranges:
        mine = [o for o in syn.ops if contains_call(r, o)]
        own = [o for i, o in enumerate(syn.ops) if innermost[i] == r.id]
        outers = sorted((p for p in syn.ranges if encloses(p, r)), key=_key)
        out[r.id] = {
            "wall_ns": r.end - r.start,
            "span_ns": max(o.end for o in mine) - min(o.start for o in mine) if mine else 0,
            "busy_ns": brute_union([(o.start, o.end) for o in mine]),
            "exclusive_busy_ns": brute_union([(o.start, o.end) for o in own]),
            "kernel_ns": sum(o.end - o.start for o in mine if o.kind == "kernel"),
            "gpu_ops": len({o.corr for o in mine}),
            "kernels": sum(o.kind == "kernel" for o in mine),
            "depth": len(outers),
            "path": "/".join([p.name for p in outers] + [r.name]),
            "op_ns": sum(o.end - o.start for o in mine),
        }
    return out


COMPARED = ["wall_ns", "span_ns", "busy_ns", "exclusive_busy_ns", "kernel_ns", "gpu_ops", "kernels", "depth", "path"]


def run(syn: Synthetic, **kwargs):
    with tempfile.TemporaryDirectory() as tmp:
        return postprocess.load(write(syn, Path(tmp)), **kwargs)


@PIPELINE
@given(workloads())
def test_instances_equal_brute_force(syn):
    result = run(syn)
    expected = brute_force(syn)
    got = {row["range_id"]: row for row in result.instances.iter_rows(named=True)}
    assert set(got) == set(expected)
    for rid, exp in expected.items():
        assert {k: got[rid][k] for k in COMPARED} == {k: exp[k] for k in COMPARED}, f"range {rid}"


@PIPELINE
@given(workloads())
def test_ranges_and_paths_sum_their_instances(syn):
    result = run(syn)
    expected = brute_force(syn)
    names = {r.id: r.name for r in syn.ranges}
    for key, table, label in [
        ("name", result.ranges, lambda rid: names[rid]),
        ("path", result.paths, lambda rid: expected[rid]["path"]),
    ]:
        for row in table.iter_rows(named=True):
            members = [rid for rid in expected if label(rid) == row[key]]
            assert row["instances"] == len(members)
            assert row["gpu_instances"] == sum(expected[m]["gpu_ops"] > 0 for m in members)
            for col in ["wall_ns", "span_ns", "busy_ns", "exclusive_busy_ns", "kernel_ns", "gpu_ops"]:
                assert row[col] == sum(expected[m][col] for m in members), (key, row[key], col)
        assert table.height == len({label(rid) for rid in expected})


@PIPELINE
@given(workloads())
def test_unattributed_and_totals_cover_every_op(syn):
    result = run(syn)
    outside = [o for o in syn.ops if not any(contains_call(r, o) for r in syn.ranges)]
    un = result.unattributed.row(0, named=True)
    assert un["gpu_ops"] == len({o.corr for o in outside})
    assert un["kernels"] == sum(o.kind == "kernel" for o in outside)
    assert un["kernel_ns"] == sum(o.end - o.start for o in outside if o.kind == "kernel")
    assert un["busy_ns"] == brute_union([(o.start, o.end) for o in outside])
    tot = result.totals.row(0, named=True)
    assert tot["gpu_ops"] == len({o.corr for o in syn.ops})
    assert tot["busy_ns"] == brute_union([(o.start, o.end) for o in syn.ops])
    assert tot["span_ns"] == (max(o.end for o in syn.ops) - min(o.start for o in syn.ops) if syn.ops else 0)


@PIPELINE
@given(workloads())
def test_time_invariants_hold(syn):
    result = run(syn)
    inst = result.instances
    assert (inst["busy_ns"] <= inst["span_ns"]).all()
    assert (inst["exclusive_busy_ns"] <= inst["busy_ns"]).all()
    assert (inst["kernel_ns"] >= 0).all() and (inst["span_ns"] >= 0).all()
    expected = brute_force(syn)
    rows = {row["range_id"]: row for row in inst.iter_rows(named=True)}
    for r in syn.ranges:
        me = rows[r.id]
        assert me["busy_ns"] <= expected[r.id]["op_ns"]  # busy <= kernel + copy time
        subtree = [s for s in syn.ranges if s.id == r.id or encloses(r, s)]
        assert me["busy_ns"] <= sum(rows[s.id]["exclusive_busy_ns"] for s in subtree)
        for child in subtree[1:]:
            assert rows[child.id]["busy_ns"] <= me["busy_ns"]  # inclusive: a child never exceeds its parent
    per_stage_ops = result.kernels.group_by("name").agg(pl.col("total_ns").sum())
    for name, total in per_stage_ops.iter_rows():
        assert result.ranges.filter(pl.col("name") == name)["busy_ns"].item() <= total


@PIPELINE
@given(workloads(serial=True))
def test_serial_ops_split_parent_busy_among_children(syn):
    """With ops that never overlap, exclusive busy partitions the parent's busy exactly."""
    result = run(syn)
    rows = {row["range_id"]: row for row in result.instances.iter_rows(named=True)}
    for r in syn.ranges:
        subtree = [s for s in syn.ranges if s.id != r.id and encloses(r, s)]
        children = [s for s in subtree if not any(encloses(m, s) for m in subtree)]
        assert sum(rows[c.id]["exclusive_busy_ns"] for c in children) <= rows[r.id]["busy_ns"]
        assert rows[r.id]["busy_ns"] == rows[r.id]["exclusive_busy_ns"] + sum(
            rows[s.id]["exclusive_busy_ns"] for s in subtree
        )


@PIPELINE
@given(workloads(), st.integers(1, 5))
def test_chunked_attribution_equals_default(syn, chunk_rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(syn, Path(tmp))
        default = postprocess.load(path)
        chunked = postprocess.load(path, chunk_rows=chunk_rows)
    for table in ["instances", "ranges", "paths", "devices", "unattributed", "totals"]:
        a, b = getattr(default, table), getattr(chunked, table)
        sort = [c for c in ("range_id", "domain", "name", "path", "device") if c in a.columns]
        if sort:
            a, b = a.sort(sort), b.sort(sort)
        assert a.equals(b), table
    k = ["domain", "name", "kernel", "kind"]
    assert default.kernels.sort(k).equals(chunked.kernels.sort(k))


def test_overlapping_children_can_each_be_busy_for_the_whole_parent(make_trace, tmp_path):
    """Two sibling ranges whose kernels overlap on two streams: each child's exclusive busy is
    the full 10 ns, the parent's inclusive busy is 10 ns too, so children's exclusive times do
    not have to add up to at most the parent's busy when streams overlap."""
    calls = [{"start": 2, "end": 3, "correlationId": 1}, {"start": 6, "end": 7, "correlationId": 2}]
    kernels = [
        {"start": 100, "end": 110, "correlationId": 1, "streamId": 7},
        {"start": 100, "end": 110, "correlationId": 2, "streamId": 8},
    ]
    ranges = [
        {"start": 0, "end": 10, "text": "parent"},
        {"start": 1, "end": 4, "text": "a"},
        {"start": 5, "end": 8, "text": "b"},
    ]
    st_ = postprocess.load(make_trace(tmp_path, ranges=ranges, kernels=kernels, calls=calls))
    busy = dict(st_.instances.select("name", "busy_ns").iter_rows())
    excl = dict(st_.instances.select("name", "exclusive_busy_ns").iter_rows())
    assert busy == {"parent": 10, "a": 10, "b": 10}
    assert excl == {"parent": 0, "a": 10, "b": 10}
    assert st_.instances.filter(pl.col("name") == "parent")["span_ns"].item() == 10


def test_globaltid_helper_packs_pid_and_tid():
    assert gtid(5, 7) == (5 << 24) | 7
