"""Several processes and GPUs in one export: per-process and per-device stage times, communication
(NCCL) kernel time per stage and its overlap with compute.

The real case is the 2-rank torchrun trace of the shared corpus (two processes, one GPU each,
NCCL all-to-all kernels); hand-made exports pin the overlap arithmetic down.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import DEFAULT_PID, corpus_dir, launch

from stagemfu import postprocess
from stagemfu.postprocess.categories import COMMUNICATION, category_expr, category_rules
from stagemfu.postprocess.intervals import group_union

NCCL_TRACE = "nsysai_mfu_2gpu_h100_torchrun_nccl.sqlite"
SUMMED = ["instances", "wall_ns", "span_ns", "busy_ns", "kernel_ns", "comm_ns", "comm_busy_ns", "overlap_ns"]


@pytest.fixture(scope="module")
def torchrun():
    return postprocess.load(corpus_dir() / NCCL_TRACE)


def test_each_rank_is_a_process_with_its_own_gpu(torchrun):
    procs = torchrun.processes
    assert procs["pid"].unique().sort().to_list() == [144, 145]
    # Every kernel the ranges launched ran on the device of the process that launched it.
    ops = torchrun.ops.filter(pl.col("kind") == "kernel", pl.col("range_id").is_not_null())
    pid_of = ops.select("pid", "device").unique().sort("pid")
    assert pid_of.rows() == [(144, 0), (145, 1)]


def test_process_rows_sum_to_the_range_rows(torchrun):
    summed = torchrun.processes.group_by("domain", "name").agg([pl.col(c).sum() for c in SUMMED])
    joined = torchrun.ranges.select("domain", "name", *SUMMED).join(summed, on=["domain", "name"], suffix="_p")
    assert joined.height == torchrun.ranges.height
    for column in SUMMED:
        assert (joined[column] == joined[f"{column}_p"]).all(), column


def test_communication_time_is_the_communication_category(torchrun):
    """comm_ns per stage equals the kernel table's communication rows (two independent sums)."""
    comm = (
        torchrun.categories.filter(pl.col("category") == COMMUNICATION)
        .group_by("domain", "name")
        .agg(pl.col("total_ns").sum())
    )
    ranges = torchrun.ranges.filter(pl.col("comm_ns") > 0)
    joined = ranges.join(comm, on=["domain", "name"], how="full", coalesce=True)
    assert joined.height == ranges.height > 0
    assert (joined["comm_ns"] == joined["total_ns"]).all()


def test_torchrun_nccl_kernels_never_overlap_compute(torchrun):
    """Each rank ran NCCL and compute on one stream, so no overlap; checked from the raw kernels."""
    trace = torchrun.trace
    named = (
        trace.ops.held.filter(pl.col("kind") == "kernel")
        .join(trace.names, on="name_id")
        .with_columns(comm=category_expr(category_rules()) == COMMUNICATION)
    )
    for device in (0, 1):
        k = named.filter(pl.col("device") == device)

        def union(frame: pl.DataFrame) -> int:
            s, e = frame["start"].to_numpy(), frame["end"].to_numpy()
            return int(group_union(np.zeros(len(s), dtype=np.int64), s, e)[1].sum())

        both = union(k.filter("comm")) + union(k.filter(~pl.col("comm"))) - union(k)
        assert both == 0
    assert torchrun.instances["overlap_ns"].max() == 0
    assert torchrun.devices["comm_ns"].sum() == torchrun.ranges["comm_ns"].sum() > 0


def two_stream_trace(make_trace, tmp_path, *, comm_device: int = 0):
    """One range: a GEMM [1000, 1100) and an NCCL kernel [1050, 1200) on another stream."""
    gemm_call, gemm = launch(1, (10, 20), (1000, 1100), name="gemm_kernel", stream=7)
    nccl_call, nccl = launch(2, (30, 40), (1050, 1200), name="ncclDevKernel_AllReduce", stream=8, device=comm_device)
    return make_trace(
        tmp_path,
        ranges=[{"start": 0, "end": 100, "text": "step"}],
        calls=[gemm_call, nccl_call],
        kernels=[gemm, nccl],
    )


def test_overlap_is_the_time_communication_and_compute_both_ran(make_trace, tmp_path):
    st = postprocess.load(two_stream_trace(make_trace, tmp_path))
    row = st.ranges.row(0, named=True)
    assert (row["busy_ns"], row["kernel_ns"]) == (200, 250)
    assert (row["comm_ns"], row["comm_busy_ns"], row["overlap_ns"]) == (150, 150, 50)


def test_overlap_across_devices_is_not_overlap(make_trace, tmp_path):
    st = postprocess.load(two_stream_trace(make_trace, tmp_path, comm_device=1))
    row = st.ranges.row(0, named=True)
    assert (row["comm_ns"], row["comm_busy_ns"], row["overlap_ns"]) == (150, 150, 0)
    devices = {d["device"]: d for d in st.devices.iter_rows(named=True)}
    assert (devices[0]["comm_ns"], devices[1]["comm_ns"]) == (0, 150)
    assert devices[0]["overlap_ns"] == devices[1]["overlap_ns"] == 0


def test_user_categories_decide_what_communicates(make_trace, tmp_path):
    rules = tmp_path / "cats.csv"
    rules.write_text("category,pattern\ncommunication,gemm_kernel\ngemm,nccl\n")
    st = postprocess.load(two_stream_trace(make_trace, tmp_path), categories=rules)
    row = st.ranges.row(0, named=True)
    assert (row["comm_ns"], row["comm_busy_ns"], row["overlap_ns"]) == (100, 100, 50)


def test_two_processes_in_one_export_get_a_row_each(make_trace, tmp_path):
    a_call, a = launch(1, (10, 20), (100, 180), pid=1, tid=1, device=0)
    b_call, b = launch(1, (10, 20), (100, 130), pid=2, tid=2, device=1)
    path = make_trace(
        tmp_path,
        ranges=[
            {"start": 0, "end": 50, "text": "step", "pid": 1, "tid": 1},
            {"start": 0, "end": 60, "text": "step", "pid": 2, "tid": 2},
        ],
        calls=[a_call, b_call],
        kernels=[a, b],
    )
    st = postprocess.load(path)
    rows = st.processes.select("pid", "wall_ns", "busy_ns").rows()
    assert rows == [(1, 50, 80), (2, 60, 30)]
    assert st.devices.select("device", "busy_ns").rows() == [(0, 80), (1, 30)]


@pytest.mark.parametrize("chunk_ops", [None, 1])
def test_launches_from_another_thread_during_a_range_are_noted(make_trace, tmp_path, chunk_ops):
    """A worker thread's launches while ``backward`` is open on the main thread: unattributed, and said so."""
    own_call, own = launch(1, (10, 20), (100, 110), tid=1)
    worker_calls, worker_ops = zip(*(launch(c, (30 + c, 31 + c), (200 + c, 201 + c), tid=2) for c in range(2, 6)))
    late_call, late = launch(9, (500, 510), (600, 610), tid=2)  # after the range: not counted
    path = make_trace(
        tmp_path,
        ranges=[
            {"start": 0, "end": 100, "text": "backward", "tid": 1},
            {"start": 0, "end": 100, "text": "idle", "tid": 3},
        ],
        calls=[own_call, *worker_calls, late_call],
        kernels=[own, *worker_ops, late],
    )
    st = postprocess.load(path, chunk_ops=chunk_ops)
    (note,) = [n for n in st.notes if "other threads" in n]
    assert note.endswith(":backward 4 (its own thread: 1); :idle 4 (its own thread: 0)")
    assert st.unattributed["gpu_ops"].item() == 5


def test_a_few_launches_from_other_threads_are_not_noted(make_trace, tmp_path):
    """Under a tenth of the launches during a range: no note (a data loader's stray copy, say)."""
    own_calls, own_ops = zip(*(launch(c, (c, c + 1), (100 + c, 101 + c), tid=1) for c in range(1, 11)))
    other_call, other = launch(20, (50, 51), (300, 301), tid=2)
    path = make_trace(
        tmp_path,
        ranges=[{"start": 0, "end": 100, "text": "forward", "tid": 1}],
        calls=[*own_calls, other_call],
        kernels=[*own_ops, other],
    )
    assert not [n for n in postprocess.load(path).notes if "other threads" in n]


def worker_thread_trace(make_trace, tmp_path):
    """``backward`` open on the main thread (tid = pid); a worker thread launches one kernel inside
    its own ``ncclAllReduce`` range, which starts later."""
    call, kernel = launch(1, (30, 31), (200, 210), tid=7)
    return make_trace(
        tmp_path,
        ranges=[
            {"start": 0, "end": 100, "text": "backward", "tid": DEFAULT_PID},
            {"start": 25, "end": 40, "text": "ncclAllReduce", "tid": 7},
        ],
        calls=[call],
        kernels=[kernel],
    )


@pytest.mark.parametrize("chunk_ops", [None, 1])
def test_process_rule_gives_worker_thread_launches_to_the_main_thread_ranges(make_trace, tmp_path, chunk_ops):
    path = worker_thread_trace(make_trace, tmp_path)
    by_thread = {r["name"]: r for r in postprocess.load(path, chunk_ops=chunk_ops).ranges.iter_rows(named=True)}
    assert (by_thread["backward"]["gpu_ops"], by_thread["ncclAllReduce"]["gpu_ops"]) == (0, 1)
    st = postprocess.load(path, chunk_ops=chunk_ops, launches="process")
    rows = {r["name"]: r for r in st.ranges.iter_rows(named=True)}
    assert {n: (r["gpu_ops"], r["busy_ns"], r["kernel_ns"]) for n, r in rows.items()} == {
        "backward": (1, 10, 10),
        "ncclAllReduce": (1, 10, 10),
    }
    # Counted once in the totals; its innermost range is the one on its own thread.
    assert (st.totals["gpu_ops"].item(), st.totals["busy_ns"].item()) == (1, 10)
    assert st.unattributed["gpu_ops"].item() == 0
    assert (rows["backward"]["exclusive_busy_ns"], rows["ncclAllReduce"]["exclusive_busy_ns"]) == (0, 10)


def test_unknown_launch_rule_is_refused(make_trace, tmp_path):
    with pytest.raises(ValueError, match="launches"):
        postprocess.load(worker_thread_trace(make_trace, tmp_path), launches="device")
