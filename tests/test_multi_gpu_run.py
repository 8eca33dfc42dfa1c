"""The 2-GPU tensor-parallel run (``tp_train``: ``stagemfu collect -- torchrun --nproc_per_node=2``).

Recorded on a host with two H100s by ``tests/fixtures/record_multi_gpu.sh``: one process per GPU,
each rank's ``warmup`` / ``measured`` / ``step`` / ``forward`` / ``backward`` / ``optimizer``
ranges, NCCL all-reduces inside forward, backward and optimizer. Per-process numbers are checked
against nsys's own per-instance reports, exactly; per-device numbers against the same reports and
the device each process's kernels ran on, read straight from the export.
"""

from __future__ import annotations

import sqlite3

import polars as pl
import pytest

from stagemfu import postprocess, report
from stagemfu.report.render.report_view import summary_lines

NAME = "tp_train"
RANKS = {772: 0, 773: 1}  # process id -> the GPU it drove (torchrun's LOCAL_RANK)
STAGES = ("warmup", "measured", "step", "forward", "backward", "optimizer")
KEY = pl.concat_str([pl.col("domain"), pl.lit(":"), pl.col("name")]).alias("key")


@pytest.fixture(scope="module")
def st(loaded):
    return loaded[NAME]


@pytest.fixture(scope="module")
def stats(nsys_stats):
    return nsys_stats[NAME]


def test_each_rank_ran_on_its_own_gpu(trace_paths):
    """Which device each process's kernels ran on, from the raw kernel table (no stagemfu code)."""
    with sqlite3.connect(trace_paths[NAME]) as db:
        rows = db.execute(
            "SELECT DISTINCT (globalPid >> 24) & 16777215, deviceId FROM CUPTI_ACTIVITY_KIND_KERNEL"
        ).fetchall()
    assert dict(rows) == RANKS


def test_both_ranks_ranges_are_found(st):
    per_rank = st.processes.filter(pl.col("domain") == "stagemfu")
    for pid in RANKS:
        mine = dict(per_rank.filter(pl.col("pid") == pid).select("name", "instances").iter_rows())
        assert mine == {"warmup": 1, "measured": 1, "step": 4, "forward": 4, "backward": 4, "optimizer": 4}


def proj_per_process(stats) -> pl.DataFrame:
    """nvtx_gpu_proj_trace summed per (range, process): instances, projected time, GPU ops."""
    return (
        stats["nvtx_gpu_proj_trace"]
        .group_by(pl.col("Name").alias("key"), pl.col("PID").alias("pid"))
        .agg(
            pl.len().alias("instances_nsys"),
            pl.col("Projected Duration (ns)").sum().alias("span_nsys"),
            pl.col("NumGPUOps").sum().alias("gpu_ops_nsys"),
        )
    )


def test_per_process_span_and_gpu_ops_equal_nsys(st, stats):
    theirs = proj_per_process(stats)
    ours = st.processes.filter(pl.col("gpu_instances") > 0).select(KEY, "pid", "instances", "span_ns", "gpu_ops")
    joined = ours.join(theirs, on=["key", "pid"], how="full", coalesce=True)
    assert joined.height == theirs.height > 2 * len(STAGES)
    assert joined.null_count().sum_horizontal().item() == 0, joined
    for ours_col, nsys_col in (("instances", "instances_nsys"), ("span_ns", "span_nsys"), ("gpu_ops", "gpu_ops_nsys")):
        assert (joined[ours_col] == joined[nsys_col]).all(), joined.filter(pl.col(ours_col) != pl.col(nsys_col))


def test_per_device_rows_are_the_process_rows_on_that_gpu(st, stats):
    """One process drives one GPU, so each device row is that process's nsys numbers."""
    theirs = proj_per_process(stats).with_columns(device=pl.col("pid").replace_strict(RANKS))
    ours = st.devices.select(KEY, "device", "span_ns", "gpu_ops")
    joined = ours.join(theirs, on=["key", "device"], how="full", coalesce=True)
    assert joined.height == theirs.height
    assert (joined["span_ns"] == joined["span_nsys"]).all()
    assert (joined["gpu_ops"] == joined["gpu_ops_nsys"]).all()


def test_nccl_time_per_stage_and_rank_equals_nsys_kernel_sums(st, stats):
    """comm_ns per (stage, process) = nvtx_kern_sum's NCCL kernel time (inclusive of nested ranges)."""
    theirs = (
        stats["nvtx_kern_sum"]
        .filter(pl.col("NVTX Range") != "", pl.col("Kernel Name").str.starts_with("ncclDevKernel"))
        .group_by(pl.col("NVTX Range").alias("key"), pl.col("PID").alias("pid"))
        .agg(pl.col("Total Time (ns)").sum().alias("comm_nsys"))
    )
    ours = st.processes.filter(pl.col("comm_ns") > 0).select(KEY, "pid", "comm_ns")
    joined = ours.join(theirs, on=["key", "pid"], how="full", coalesce=True)
    assert joined.null_count().sum_horizontal().item() == 0, joined
    assert (joined["comm_ns"] == joined["comm_nsys"]).all()
    # All-reduces run inside forward and optimizer on both ranks (backward's run on autograd's thread).
    for stage in ("forward", "optimizer"):
        assert set(joined.filter(pl.col("key") == f"stagemfu:{stage}")["pid"]) == set(RANKS)


def test_backward_work_on_autograd_threads_is_flagged(st):
    """Backward's kernels are launched by autograd's thread: unattributed, as in nsys, and said so."""
    backward = st.ranges.filter(pl.col("domain") == "stagemfu", pl.col("name") == "backward").row(0, named=True)
    assert backward["gpu_ops"] == 8  # the loss gradient seed, one per step and rank
    (note,) = [n for n in st.notes if "other threads of the same process" in n]
    assert "stagemfu:backward 676 (its own thread: 8)" in note
    assert "stagemfu:forward" not in note


def test_report_sums_both_ranks_and_says_so(trace_paths, st, tmp_path):
    """MFU of the two GPUs together: FLOPs of every rank over the summed (GPU-seconds) kernel time."""
    flops = tmp_path / "flops.yaml"
    flops.write_text("stages:\n  forward: {flops: 1.0e11, instances: 1}\n")  # one forward of one rank
    rep = report.report(trace_paths[NAME], flops_file=flops)
    row = rep.stages.row(0, named=True)
    measured = st.instances.filter(pl.col("name") == "forward", pl.col("path").str.starts_with("measured"))
    assert measured["pid"].n_unique() == 2 and measured.height == 6  # 3 steps on each rank
    assert row["flops"] == 6 * 10**11
    assert row["kernel_ns"] == measured["kernel_ns"].sum()
    assert row["mfu_kernel"] == pytest.approx(6e11 / (row["kernel_ns"] * 1e-9 * rep.peak.tflops * 1e12))
    assert any("2 process(es) on 2 GPU(s)" in n for n in rep.notes)
    assert "(2 in the trace; the peak is one GPU's)" in summary_lines(rep)[0]


def test_single_gpu_report_has_no_several_gpus_note(trace_paths, tmp_path):
    flops = tmp_path / "flops.yaml"
    flops.write_text("prefill: 1.0e9\n")
    assert not [n for n in report.report(trace_paths["tiny_vlm"], flops_file=flops).notes if "GPU(s)" in n]


@pytest.fixture(scope="module")
def by_process(trace_paths):
    return postprocess.load(trace_paths[NAME], launches="process")


def stage(times, name: str) -> dict:
    return times.ranges.filter(pl.col("domain") == "stagemfu", pl.col("name") == name).row(0, named=True)


def test_process_rule_puts_backward_work_in_backward(st, by_process):
    """Autograd's launches join the main thread's ranges; nothing else moves, nothing counts twice."""
    assert stage(by_process, "backward")["gpu_ops"] > 70 * stage(st, "backward")["gpu_ops"]
    assert stage(by_process, "backward")["busy_ns"] > 1000 * stage(st, "backward")["busy_ns"]
    # forward has no work on other threads; step gains exactly backward's new launches.
    assert stage(by_process, "forward") == stage(st, "forward")
    gained = stage(by_process, "backward")["gpu_ops"] - stage(st, "backward")["gpu_ops"]
    assert stage(by_process, "step")["gpu_ops"] - stage(st, "step")["gpu_ops"] == gained
    assert by_process.totals.equals(st.totals)
    assert by_process.unattributed["gpu_ops"].item() < st.unattributed["gpu_ops"].item()
    assert not [n for n in by_process.notes if "other threads" in n]


def test_process_rule_chunked_equals_in_memory(trace_paths, by_process):
    chunked = postprocess.load(trace_paths[NAME], launches="process", chunk_ops=100)
    for table in ("ranges", "paths", "processes", "devices", "kernels", "totals", "unattributed"):
        assert getattr(chunked, table).equals(getattr(by_process, table)), table
