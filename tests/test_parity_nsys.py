"""stagemfu's numbers against the ``nsys stats`` reports recorded with each real fixture.

Every comparison is exact (integer nanoseconds and counts). nsys names a range
"<domain>:<name>" (":name" in the default domain) and groups by (range, style).

The graph-level capture (``cuda_graph_graph``) is the one documented difference: its replays are
CUPTI_ACTIVITY_KIND_GRAPH_TRACE rows, which nsys's projection ignores and stagemfu counts as ops
of kind "graph". Ranges that hold a graph op are compared after taking the graph ops out; every
other range must match as is.
"""

from __future__ import annotations

import polars as pl
import pytest
from conftest import ALL_TRACE_NAMES, read_nsys_csv

from stagemfu import postprocess
from stagemfu.postprocess.attribution import attribute

KEY = pl.concat_str([pl.col("domain"), pl.lit(":"), pl.col("name")]).alias("key")


@pytest.fixture(params=ALL_TRACE_NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def graph_keys(st) -> set[str]:
    """Ranges ("domain:name") that hold at least one graph-level op."""
    return set(st.kernels.filter(pl.col("kind") == "graph").select(KEY).to_series())


def graph_ops_per_key(st) -> dict[str, int]:
    graph = st.kernels.filter(pl.col("kind") == "graph").group_by(KEY).agg(pl.col("count").sum())
    return dict(graph.iter_rows())


def by_key_and_style(st) -> pl.DataFrame:
    """The instances summed per (domain:name, style), as nsys groups them."""
    return (
        st.instances.with_columns(KEY)
        .group_by("key", "style")
        .agg(
            pl.len().alias("instances"),
            (pl.col("gpu_ops") > 0).sum().alias("gpu_instances"),
            pl.col("wall_ns").sum(),
            pl.col("wall_ns").filter(pl.col("gpu_ops") > 0).sum().alias("gpu_wall_ns"),
            pl.col("span_ns").sum(),
            pl.col("gpu_ops").sum(),
        )
    )


def proj_sum(nsys_stats, name) -> pl.DataFrame:
    return nsys_stats[name]["nvtx_gpu_proj_sum"].rename({"Range": "key", "Style": "style"})


def joined_projection(st, nsys_stats, name) -> pl.DataFrame:
    """stagemfu per (range, style) joined to nvtx_gpu_proj_sum, ranges with graph ops left out."""
    ours = by_key_and_style(st).filter(pl.col("gpu_instances") > 0, ~pl.col("key").is_in(graph_keys(st)))
    theirs = proj_sum(nsys_stats, name).filter(~pl.col("key").is_in(graph_keys(st)))
    assert sorted(ours["key"]) == sorted(theirs["key"]), "ranges with GPU work differ from nsys's projection"
    joined = ours.join(theirs, on=["key", "style"], how="inner")
    assert joined.height == theirs.height, "a range's style differs from nsys"
    assert joined.height > 0
    return joined


def assert_columns_equal(frame: pl.DataFrame, ours: str, theirs: str) -> None:
    bad = frame.filter(pl.col(ours) != pl.col(theirs)).select("key", ours, theirs)
    assert bad.is_empty(), f"{ours} differs from nsys {theirs!r}:\n{bad}"


# --------------------------------------------------------------------------------------------
# nvtx_gpu_proj_sum


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("span_ns", "Total Proj Time (ns)"),  # span = nsys projected time
        ("gpu_instances", "Range Instances"),
        ("gpu_ops", "Total GPU Ops"),
        ("gpu_wall_ns", "Total Range Time (ns)"),
    ],
)
def test_projection_sums_match_nsys(loaded, nsys_stats, name, ours, theirs):
    joined = joined_projection(loaded[name], nsys_stats, name)
    assert_columns_equal(joined, ours, theirs)


def test_ranges_table_agrees_with_nsys_projection(loaded, nsys_stats, name):
    """The published per-(domain, name) table, not only the instances, carries nsys's numbers."""
    st = loaded[name]
    ranges = st.ranges.with_columns(KEY).filter(~pl.col("key").is_in(graph_keys(st)), pl.col("gpu_instances") > 0)
    theirs = (
        proj_sum(nsys_stats, name)
        .group_by("key")
        .agg(pl.col("Total Proj Time (ns)").sum(), pl.col("Range Instances").sum(), pl.col("Total GPU Ops").sum())
    )
    joined = ranges.join(theirs, on="key", how="full", coalesce=True).filter(~pl.col("key").is_in(graph_keys(st)))
    assert joined.null_count().select("span_ns", "Total Proj Time (ns)").row(0) == (0, 0), joined
    assert_columns_equal(joined, "span_ns", "Total Proj Time (ns)")
    assert_columns_equal(joined, "gpu_instances", "Range Instances")
    assert_columns_equal(joined, "gpu_ops", "Total GPU Ops")


def stats_rows(st, metric: str) -> pl.DataFrame:
    return st.instance_stats.filter(pl.col("metric") == metric).with_columns(KEY)


def assert_statistics_match(ours: pl.DataFrame, theirs: pl.DataFrame, columns: dict[str, str]) -> None:
    """count/min/max exactly; mean and median to nsys's printed precision (one decimal)."""
    joined = ours.join(theirs, on="key", how="inner")
    assert joined.height == theirs.height
    for mine in ("count", "min_ns", "max_ns"):
        assert_columns_equal(joined, mine, columns[mine])
    for mine in ("mean_ns", "p50_ns"):
        bad = joined.filter((pl.col(mine) - pl.col(columns[mine])).abs() > 0.55)
        assert bad.is_empty(), bad.select("key", mine, columns[mine])


def test_span_statistics_match_nsys_projection_statistics(loaded, nsys_stats, name):
    st = loaded[name]
    theirs = proj_sum(nsys_stats, name).filter(~pl.col("key").is_in(graph_keys(st)))
    assert_statistics_match(
        stats_rows(st, "span_ns"),
        theirs,
        {
            "count": "Range Instances",
            "min_ns": "Proj Min (ns)",
            "max_ns": "Proj Max (ns)",
            "mean_ns": "Proj Avg (ns)",
            "p50_ns": "Proj Med (ns)",
        },
    )


def test_wall_statistics_match_nsys_nvtx_sum_statistics(loaded, nsys_stats, name):
    theirs = nsys_stats[name]["nvtx_sum"].rename({"Range": "key"})
    assert_statistics_match(
        stats_rows(loaded[name], "wall_ns"),
        theirs,
        {
            "count": "Instances",
            "min_ns": "Min (ns)",
            "max_ns": "Max (ns)",
            "mean_ns": "Avg (ns)",
            "p50_ns": "Med (ns)",
        },
    )


# --------------------------------------------------------------------------------------------
# nvtx_gpu_proj_trace (one row per projected instance)


def test_each_instance_matches_nsys_projection_trace(trace_paths, loaded, nsys_stats, name):
    st = loaded[name]
    starts = attribute(postprocess.read(trace_paths[name])).instances.select("range_id", "gpu_start_ns")
    ours = (
        st.instances.join(starts, on="range_id", how="left")
        .filter(pl.col("gpu_ops") > 0)
        .with_columns(KEY)
        .filter(~pl.col("key").is_in(graph_keys(st)))
    )
    theirs = nsys_stats[name]["nvtx_gpu_proj_trace"].filter(~pl.col("Name").is_in(graph_keys(st)))
    joined = ours.join(theirs, left_on=["start_ns", "tid"], right_on=["Orig Start (ns)", "TID"], how="full")
    unmatched = joined.filter(pl.col("key").is_null() | pl.col("Name").is_null())
    assert unmatched.is_empty(), f"instances not in both:\n{unmatched.select('key', 'Name', 'start_ns')}"
    for ours_col, theirs_col in [
        ("key", "Name"),
        ("style", "Style"),
        ("pid", "PID"),
        ("wall_ns", "Orig Duration (ns)"),
        ("gpu_start_ns", "Projected Start (ns)"),
        ("span_ns", "Projected Duration (ns)"),
        ("gpu_ops", "NumGPUOps"),
        ("depth", "Lvl"),
    ]:
        bad = joined.filter(pl.col(ours_col) != pl.col(theirs_col))
        assert bad.is_empty(), f"{ours_col} != nsys {theirs_col}:\n{bad.select('key', ours_col, theirs_col)}"


# --------------------------------------------------------------------------------------------
# nvtx_sum (every range, with or without GPU work)


def test_wall_time_and_instances_match_nsys_nvtx_sum(loaded, nsys_stats, name):
    ours = by_key_and_style(loaded[name])
    theirs = nsys_stats[name]["nvtx_sum"].rename({"Range": "key", "Style": "style"})
    assert sorted(ours["key"]) == sorted(theirs["key"])
    joined = ours.join(theirs, on=["key", "style"], how="inner")
    assert joined.height == theirs.height
    assert_columns_equal(joined, "wall_ns", "Total Time (ns)")
    assert_columns_equal(joined, "instances", "Instances")


# --------------------------------------------------------------------------------------------
# nvtx_kern_sum: per (range, style, PID, TID, kernel name), inclusive of nested ranges; the rows
# with an empty range are the kernels launched outside every range.


def named_ops(trace) -> pl.DataFrame:
    """The trace's GPU operations with their display ``name``."""
    return trace.ops.held.join(trace.names, on="name_id", how="left")


def kern_sum(nsys_stats, name) -> pl.DataFrame:
    return nsys_stats[name]["nvtx_kern_sum"].rename({"NVTX Range": "key", "Kernel Name": "kernel"})


def test_kernel_time_per_range_matches_nvtx_kern_sum(loaded, nsys_stats, name):
    st = loaded[name]
    theirs = (
        kern_sum(nsys_stats, name)
        .filter(pl.col("key") != "")
        .group_by("key")
        .agg(pl.col("Kern Inst").sum(), pl.col("Total Time (ns)").sum())
    )
    kernel_only = (
        st.kernels.filter(pl.col("kind") == "kernel")
        .with_columns(KEY)
        .group_by("key")
        .agg(pl.col("count").sum(), pl.col("total_ns").sum())
    )
    joined = kernel_only.join(theirs, on="key", how="full", coalesce=True)
    assert joined.null_count().select("count", "Kern Inst").row(0) == (0, 0), joined
    assert_columns_equal(joined, "count", "Kern Inst")
    assert_columns_equal(joined, "total_ns", "Total Time (ns)")
    # The ranges table's kernel_ns is the same number wherever no graph op is involved.
    ranges = st.ranges.with_columns(KEY).filter(~pl.col("key").is_in(graph_keys(st)), pl.col("kernels") > 0)
    joined = ranges.join(theirs, on="key", how="left")
    assert_columns_equal(joined, "kernel_ns", "Total Time (ns)")
    assert_columns_equal(joined, "kernels", "Kern Inst")


def test_kernel_breakdown_per_range_matches_nvtx_kern_sum(loaded, nsys_stats, name):
    st = loaded[name]
    theirs = (
        kern_sum(nsys_stats, name)
        .filter(pl.col("key") != "")
        .group_by("key", "kernel")
        .agg(
            pl.col("Kern Inst").sum(),
            pl.col("Total Time (ns)").sum(),
            pl.col("Min (ns)").min(),
            pl.col("Max (ns)").max(),
        )
    )
    ours = st.kernels.filter(pl.col("kind") == "kernel").with_columns(KEY).select("key", "kernel", "count", "total_ns")
    joined = ours.join(theirs, on=["key", "kernel"], how="full", coalesce=True)
    missing = joined.filter(pl.col("count").is_null() | pl.col("Kern Inst").is_null())
    assert missing.is_empty(), missing.select("key", pl.col("kernel").str.slice(0, 60))
    assert_columns_equal(joined, "count", "Kern Inst")
    assert_columns_equal(joined, "total_ns", "Total Time (ns)")


def test_kernels_outside_ranges_match_nvtx_kern_sum_unranged_rows(loaded, nsys_stats, name):
    st = loaded[name]
    outside = kern_sum(nsys_stats, name).filter(pl.col("key") == "")
    assert (outside["NVTX Inst"] == 0).all()
    unattributed = st.unattributed.row(0, named=True)
    assert unattributed["kernels"] == outside["Kern Inst"].sum()
    assert unattributed["kernel_ns"] == outside["Total Time (ns)"].sum()


def test_range_instances_in_nvtx_kern_sum_match(loaded, nsys_stats, name):
    """nvtx_kern_sum's "NVTX Inst" counts, per kernel name, the range's instances that ran it.

    So the range's instances with kernels lie between its largest row and the sum of its rows,
    and equal the count exactly when the range ran one kernel name. Real traces have both kinds:
    CUB's scan ranges ran an int scan kernel in 22 instances and a long one in 2; the gundam
    projector runs once on the global view and once on the crops, each with its own GEMM kernel.
    """
    st = loaded[name]
    theirs = (
        kern_sum(nsys_stats, name)
        .filter(pl.col("key") != "")
        .group_by("key", "TID")
        .agg(low=pl.col("NVTX Inst").max(), high=pl.col("NVTX Inst").sum())
    )
    ours = st.instances.filter(pl.col("kernels") > 0).with_columns(KEY).group_by("key", "tid").agg(pl.len().alias("n"))
    # A range whose only ops are graph-level replays (cuda_graph_graph) has no kernel row in nsys.
    with_kernels = set(st.kernels.filter(pl.col("kind") == "kernel").select(KEY).to_series())
    ours = ours.filter(pl.col("key").is_in(with_kernels))
    joined = ours.join(theirs, left_on=["key", "tid"], right_on=["key", "TID"], how="full", coalesce=True)
    outside = joined.filter(~pl.col("n").is_between(pl.col("low"), pl.col("high")) | pl.col("n").is_null())
    assert outside.is_empty(), outside


# --------------------------------------------------------------------------------------------
# cuda_gpu_kern_sum and cuda_gpu_mem_time_sum: the ops the reader found, per name.


def test_kernel_totals_per_name_match_cuda_gpu_kern_sum(loaded, nsys_stats, name):
    ops = named_ops(loaded[name].trace)
    ours = (
        ops.filter(pl.col("kind") == "kernel")
        .group_by("name")
        .agg(
            pl.len().alias("count"),
            (pl.col("end") - pl.col("start")).sum().alias("total_ns"),
            (pl.col("end") - pl.col("start")).min().alias("min_ns"),
            (pl.col("end") - pl.col("start")).max().alias("max_ns"),
        )
        .rename({"name": "key"})
    )
    theirs = nsys_stats[name]["cuda_gpu_kern_sum"].rename({"Name": "key"})
    joined = ours.join(theirs, on="key", how="full", coalesce=True)
    assert joined.height == theirs.height == ours.height
    for a, b in [
        ("count", "Instances"),
        ("total_ns", "Total Time (ns)"),
        ("min_ns", "Min (ns)"),
        ("max_ns", "Max (ns)"),
    ]:
        assert_columns_equal(joined, a, b)


def test_totals_count_every_kernel_nsys_counts(loaded, nsys_stats, name):
    st = loaded[name]
    kern = nsys_stats[name]["cuda_gpu_kern_sum"]
    graph = st.trace.ops.held.filter(pl.col("kind") == "graph")
    totals = st.totals.row(0, named=True)
    assert totals["kernels"] == kern["Instances"].sum() + graph.height
    assert totals["kernel_ns"] == kern["Total Time (ns)"].sum() + (graph["end"] - graph["start"]).sum()


def test_memcpy_and_memset_totals_match_cuda_gpu_mem_time_sum(loaded, nsys_stats, name):
    ops = named_ops(loaded[name].trace).filter(pl.col("kind").is_in(["memcpy", "memset"]))
    theirs = nsys_stats[name]["cuda_gpu_mem_time_sum"]
    if theirs.is_empty():
        assert ops.is_empty()
        return
    ours = (
        ops.group_by("name")
        .agg(pl.len().alias("count"), (pl.col("end") - pl.col("start")).sum().alias("total_ns"))
        .rename({"name": "key"})
    )
    joined = ours.join(theirs.rename({"Operation": "key"}), on="key", how="full", coalesce=True)
    assert joined.height == theirs.height == ours.height, joined
    assert_columns_equal(joined, "count", "Count")
    assert_columns_equal(joined, "total_ns", "Total Time (ns)")


# --------------------------------------------------------------------------------------------
# CUDA graphs


def test_graph_replays_are_graph_ops_nsys_projection_leaves_out(loaded, nsys_stats):
    st = loaded["cuda_graph_graph"]
    replay = st.instances.filter(pl.col("name") == "graph_replay")
    assert replay.height == 5
    assert replay["gpu_ops"].to_list() == [1] * 5
    assert (replay["span_ns"] > 0).all()
    assert (replay["busy_ns"] == replay["span_ns"]).all()
    kinds = st.kernels.filter(pl.col("name") == "graph_replay")
    assert kinds["kind"].to_list() == ["graph"]
    assert kinds["count"].to_list() == [5]
    assert ":graph_replay" not in set(nsys_stats["cuda_graph_graph"]["nvtx_gpu_proj_sum"]["Range"])
    assert ":graph_replay" in set(nsys_stats["cuda_graph_graph"]["nvtx_sum"]["Range"])


def test_ranges_around_graph_replays_match_nsys_once_graph_ops_are_taken_out(loaded, nsys_stats):
    st = loaded["cuda_graph_graph"]
    graph_ops = graph_ops_per_key(st)
    assert graph_ops == {":measured": 6, ":graph_replay": 5, ":mixed": 1}
    theirs = dict(nsys_stats["cuda_graph_graph"]["nvtx_gpu_proj_sum"].select("Range", "Total GPU Ops").iter_rows())
    ours = dict(st.ranges.select(KEY, "gpu_ops").iter_rows())
    for key in (":measured", ":mixed"):
        assert ours[key] - graph_ops[key] == theirs[key]
    assert ours[":eager"] == theirs[":eager"]


def test_node_level_graph_kernels_count_as_one_op_per_replay(loaded, nsys_stats):
    st = loaded["cuda_graph_node"]
    replay = st.instances.filter(pl.col("name") == "graph_replay")
    assert replay.height == 5
    assert replay["gpu_ops"].to_list() == [1] * 5  # the nodes share the cudaGraphLaunch correlation id
    assert (replay["kernels"] > 1).all()
    assert st.ranges.filter(pl.col("name") == "graph_replay")["gpu_instances"].item() == 5


# --------------------------------------------------------------------------------------------
# named_domain specifics


def test_same_name_in_two_domains_is_two_ranges(loaded):
    ranges = loaded["named_domain"].ranges.filter(pl.col("name") == "prefill")
    assert sorted(ranges["domain"]) == ["", "stagemfu.fixture"]
    assert (ranges["instances"] == 1).all()


def test_cross_thread_range_has_wall_time_only(loaded, nsys_stats):
    st = loaded["named_domain"]
    cross = st.instances.filter(pl.col("name") == "cross_thread").row(0, named=True)
    wall = nsys_stats["named_domain"]["nvtx_sum"].filter(pl.col("Range") == "stagemfu.fixture:cross_thread")
    assert cross["wall_ns"] == wall["Total Time (ns)"].item()
    assert (cross["gpu_ops"], cross["span_ns"], cross["busy_ns"], cross["kernel_ns"]) == (0, 0, 0, 0)
    assert any("another thread" in note for note in st.notes)


def test_range_that_launches_nothing_has_no_gpu_time(loaded):
    idle = loaded["named_domain"].ranges.filter(pl.col("name") == "idle_range").row(0, named=True)
    assert idle["instances"] == 1 and idle["gpu_instances"] == 0
    assert idle["wall_ns"] > 0 and idle["span_ns"] == idle["busy_ns"] == idle["gpu_ops"] == 0
    assert idle["idle_share"] is None


def test_worker_thread_range_is_on_its_own_thread(loaded, nsys_stats):
    st = loaded["named_domain"]
    worker = st.instances.filter(pl.col("name") == "worker_step").row(0, named=True)
    step = st.instances.filter(pl.col("name") == "step").row(0, named=True)
    assert worker["tid"] != step["tid"] and worker["pid"] == step["pid"]
    assert worker["depth"] == 0 and worker["path"] == "worker_step"


def test_hostile_and_long_names_are_read_exactly(loaded, nsys_stats):
    ranges = loaded["named_domain"].ranges
    hostile = "<script>alert('x')</script> \"quoted\" name\nwith newline"
    assert hostile in set(ranges["name"])
    assert "x" * 20000 in set(ranges["name"])
    nsys_names = set(nsys_stats["named_domain"]["nvtx_sum"]["Range"])
    assert set(ranges.select(KEY).to_series()) == nsys_names
    assert f"stagemfu.fixture:{hostile}" in nsys_names


def test_nsys_csv_reader_rebuilds_unquoted_multiline_names(tmp_path):
    """nsys writes a name with a newline unquoted; the test helper must put the record back together."""
    first = tmp_path / "first.csv"
    first.write_text('Range,Style,Total (ns)\na "q" name\nsecond line,PushPop,5\n"x, y",PushPop,7\n')
    assert read_nsys_csv(first).rows() == [('a "q" name\nsecond line', "PushPop", 5), ("x, y", "PushPop", 7)]
    last = tmp_path / "last.csv"
    last.write_text("Total (ns),Style,Range\n5,PushPop,a name\nsecond line\n7,PushPop,b\n")
    assert read_nsys_csv(last).rows() == [(5, "PushPop", "a name\nsecond line"), (7, "PushPop", "b")]


def test_every_op_names_an_enclosing_range_or_none(loaded, name):
    """st.ops: an op's range_id is a range on its launching thread whose interval holds the call."""
    st = loaded[name]
    ranges = st.trace.ranges.select(
        "range_id", pl.col("start").alias("r_start"), pl.col("end").alias("r_end"), "pid", pl.col("tid").alias("r_tid")
    )
    tied = st.ops.filter(pl.col("range_id").is_not_null()).join(ranges, on="range_id", how="left", suffix="_r")
    inside = tied.filter(
        (pl.col("r_tid") == pl.col("tid"))
        & (pl.col("pid_r") == pl.col("pid"))
        & (pl.col("r_start") <= pl.col("call_start"))
        & (pl.col("call_end") <= pl.col("r_end"))
    )
    assert inside.height == tied.height > 0
    outside = st.ops.filter(pl.col("range_id").is_null())
    assert outside.filter(pl.col("kind").is_in(["kernel", "graph"])).height == st.unattributed["kernels"][0]
