"""Time-ordered chunks (bounded memory) give the in-memory numbers exactly.

Chunks are cut where no GPU operation runs, so interval unions add up; launches split across a
cut count once. Tiny chunk sizes force many cuts on the real fixtures, the multi-process corpus
trace and random workloads.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import TRACE_NAMES, corpus_dir, launch
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_intervals_properties import PIPELINE, workloads, write

from stagemfu import postprocess
from stagemfu.cli import cli
from stagemfu.postprocess import attribution, owners
from stagemfu.postprocess.nsys import chunks, tables

TABLES = (
    "instances",
    "ranges",
    "processes",
    "paths",
    "instance_stats",
    "devices",
    "kernels",
    "categories",
    "unattributed",
    "totals",
)


def assert_same_numbers(in_memory, chunked) -> None:
    for table in TABLES:
        try:
            assert_frame_equal(getattr(in_memory, table), getattr(chunked, table), check_row_order=False)
        except AssertionError as err:
            raise AssertionError(f"{table}: {err}") from err


def chunks_of(st) -> int:
    note = next(n for n in st.notes if n.startswith("read in "))
    return int(note.split()[2])


@pytest.mark.parametrize("name", TRACE_NAMES)
@pytest.mark.parametrize("chunk_ops", [25, 400])
def test_real_fixtures_chunked_equal_in_memory(trace_paths, loaded, name, chunk_ops):
    chunked = postprocess.load(trace_paths[name], chunk_ops=chunk_ops)
    assert_same_numbers(loaded[name], chunked)
    assert chunked.ops.is_empty()
    if name == "tiny_vlm":  # 3,108 operations with idle gaps; a chunk closes once it holds chunk_ops
        assert 1 < chunks_of(chunked) <= 3108 // chunk_ops + 1


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_chunks_in_parallel_change_nothing(trace_paths, loaded, monkeypatch, workers):
    """Machines with 4 or more cores read and attribute several chunks at once; CI has 2 cores, so
    every way is forced here."""
    monkeypatch.setattr(attribution, "CHUNK_WORKERS", workers)
    seen = []
    chunked = postprocess.load(
        trace_paths["tiny_vlm"], chunk_ops=100, progress=lambda what, done, total: seen.append((what, done, total))
    )
    assert_same_numbers(loaded["tiny_vlm"], chunked)
    steps = [(done, total) for what, done, total in seen if what.endswith(": chunk")]
    assert steps == [(k, chunks_of(chunked)) for k in range(1, chunks_of(chunked) + 1)]


@pytest.mark.parametrize("workers", [1, 3])
def test_no_more_chunks_are_held_than_workers(trace_paths, monkeypatch, workers):
    """Chunks queued ahead of a slow one wait unread: at most ``workers`` are read and held at once."""
    read, lock, held, most = chunks.OpChunks.chunk, threading.Lock(), [0], [0]

    def tracked(self, k):
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        time.sleep(0.002 if k % 3 else 0.02)  # every third chunk slow
        return read(self, k)

    def attribute_then_release(*args, **kw):
        try:
            return attribute_ops(*args, **kw)
        finally:
            with lock:
                held[0] -= 1

    attribute_ops = attribution._attribute_ops
    monkeypatch.setattr(chunks.OpChunks, "chunk", tracked)
    monkeypatch.setattr(attribution, "_attribute_ops", attribute_then_release)
    monkeypatch.setattr(attribution, "CHUNK_WORKERS", workers)
    assert chunks_of(postprocess.load(trace_paths["tiny_vlm"], chunk_ops=100)) > 3 * workers
    assert most[0] == workers


@pytest.mark.parametrize("workers", [1, 4])
def test_a_chunk_that_fails_to_read_fails_the_load(trace_paths, monkeypatch, workers):
    """The error reaches the caller; the chunks after it, waiting for their turn, do not hang."""
    read = chunks.OpChunks.chunk

    def failing(self, k):
        if k == 2:
            raise OSError("disk gone")
        return read(self, k)

    monkeypatch.setattr(chunks.OpChunks, "chunk", failing)
    monkeypatch.setattr(attribution, "CHUNK_WORKERS", workers)
    with pytest.raises(OSError, match="disk gone"):
        postprocess.load(trace_paths["tiny_vlm"], chunk_ops=100)


@pytest.mark.parametrize(
    "name",
    [
        "nsysai_mfu_2gpu_h100_torchrun_nccl",  # two processes and GPUs, NCCL, orphan operations
        "nvfuser_thunder_phi3_xent_h200",
        "memfusion_tensorrt_resnet_rtx3090_nsys2023.1",
        "dlprof_pytorch_cnn_rtx2070s_nsys2022.1",  # oldest schema
    ],
)
def test_corpus_traces_chunked_equal_in_memory(name):
    path = corpus_dir() / f"{name}.sqlite"
    chunked = postprocess.load(path, chunk_ops=300 if name.startswith("nsysai") else 5)
    assert chunks_of(chunked) > 1
    assert_same_numbers(postprocess.load(path), chunked)


@PIPELINE
@given(workloads(), st.integers(1, 5))
def test_random_workloads_chunked_equal_in_memory(syn, chunk_ops):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(syn, Path(tmp))
        assert_same_numbers(postprocess.load(path), postprocess.load(path, chunk_ops=chunk_ops))


def test_launch_split_by_a_cut_counts_once(make_trace, tmp_path):
    """One call's two operations run with an idle gap between them (a graph's kernels); another
    call's kernel runs in the gap. Cuts fall in the gaps, the first call spans three chunks."""
    first_call, first_a = launch(1, (10, 20), (100, 110))
    _, first_b = launch(1, (10, 20), (200, 210))
    second_call, second = launch(2, (30, 40), (150, 160))
    path = make_trace(
        tmp_path,
        ranges=[{"start": 0, "end": 50, "text": "step"}, {"start": 5, "end": 25, "text": "graph"}],
        calls=[first_call, second_call],
        kernels=[first_a, first_b, second],
    )
    chunked = postprocess.load(path, chunk_ops=1)
    assert chunks_of(chunked) == 3
    assert_same_numbers(postprocess.load(path), chunked)
    gpu_ops = dict(chunked.ranges.select("name", "gpu_ops").iter_rows())
    assert gpu_ops == {"step": 2, "graph": 1}
    assert chunked.totals["gpu_ops"].item() == 2


def test_gpu_never_idle_means_one_chunk(make_trace, tmp_path):
    """Each kernel starts before the previous ends: no instant to cut at, so no cut is made."""
    pairs = [launch(i, (10 * i, 10 * i + 5), (100 + 10 * i, 115 + 10 * i)) for i in range(1, 6)]
    path = make_trace(
        tmp_path,
        ranges=[{"start": 0, "end": 100, "text": "step"}],
        calls=[c for c, _ in pairs],
        kernels=[k for _, k in pairs],
    )
    chunked = postprocess.load(path, chunk_ops=1)
    assert chunks_of(chunked) == 1
    assert_same_numbers(postprocess.load(path), chunked)


def test_auto_reads_small_exports_at_once_and_large_ones_in_chunks(trace_paths, monkeypatch):
    small = postprocess.load(trace_paths["tiny_vlm"], chunk_ops="auto")
    assert not small.ops.is_empty()
    monkeypatch.setattr(chunks, "AUTO_IN_MEMORY_OPS", 1_000)
    monkeypatch.setattr(chunks, "AUTO_CHUNK_OPS", 500)
    large = postprocess.load(trace_paths["tiny_vlm"], chunk_ops="auto")
    assert large.ops.is_empty() and chunks_of(large) > 3
    assert_same_numbers(small, large)


def test_cli_chunk_ops_gives_the_same_json(trace_paths):
    def run(*args: str) -> dict:
        result = CliRunner().invoke(cli, ["postprocess", str(trace_paths["tiny_vlm"]), "--format", "json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    chunked, whole = run("--chunk-ops", "100"), run("--chunk-ops", "0")
    assert chunked.pop("notes")[0].startswith("read in ")
    whole.pop("notes")
    assert chunked == whole


def test_cli_bad_chunk_ops_exits_2(trace_paths):
    result = CliRunner().invoke(cli, ["postprocess", str(trace_paths["tiny_vlm"]), "--chunk-ops", "-3"])
    assert result.exit_code == 2
    assert "--chunk-ops" in result.output


def test_operations_out_of_time_order_land_in_their_chunks(make_trace, tmp_path):
    """Rows far from time order give blocks covering overlapping stretches of time; every
    operation must still land in the chunk of its start, none lost or counted twice."""
    calls, kernels = zip(
        *[
            launch(c, (10 * c, 10 * c + 5), (1000 + 100 * k, 1050 + 100 * k))
            for c, k in [(1, 3), (2, 0), (3, 5), (4, 1)]
        ]
    )
    path = make_trace(tmp_path, ranges=[{"start": 0, "end": 100, "text": "all"}], calls=calls, kernels=kernels)
    chunked = postprocess.load(path, chunk_ops=1)
    assert_same_numbers(postprocess.load(path), chunked)
    assert chunked.totals["gpu_ops"].item() == 4


def test_zero_chunk_ops_means_all_at_once_and_negative_is_refused(trace_paths):
    """As on the command line; a chunk of zero operations used to mean a time bin per operation."""
    assert postprocess.load(trace_paths["tiny_vlm"], chunk_ops=0).trace.ops.held is not None
    with pytest.raises(ValueError, match="chunk_ops"):
        postprocess.load(trace_paths["tiny_vlm"], chunk_ops=-5)


def test_tiny_chunks_of_a_large_export_get_larger_blocks(trace_paths, loaded, monkeypatch):
    """A block of rows per operation would be an SQL query per operation: blocks grow instead."""
    monkeypatch.setattr(chunks, "MAX_OP_BLOCKS", 64)
    chunked = postprocess.load(trace_paths["tiny_vlm"], chunk_ops=1)
    assert_same_numbers(loaded["tiny_vlm"], chunked)
    assert 1 < chunks_of(chunked) <= 64 + 4  # 64 blocks, plus a partial one per activity table


@pytest.mark.parametrize("name", ["tiny_vlm", "tp_train"])
def test_cuts_that_need_more_reading_than_allowed_are_not_made(trace_paths, loaded, monkeypatch, name):
    """Proving an instant clean reads the rows near it; past the allowance no cut is made there."""
    free = chunks_of(postprocess.load(trace_paths[name], chunk_ops=200))
    monkeypatch.setattr(chunks, "PROBE_CHUNKS", 0)
    monkeypatch.setattr(chunks, "PROBE_BLOCKS", 0)
    capped = postprocess.load(trace_paths[name], chunk_ops=200)
    assert chunks_of(capped) < free
    assert_same_numbers(loaded[name], capped)


@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from([None, 1 << 24, 7 << 24]), st.one_of(st.none(), st.integers(0, 5000)))),
        max_size=6,
    )
)
def test_launches_are_fresh_once_across_chunks(batches):
    """Against a set: an operation is fresh when no earlier chunk held its (process, correlation id)."""
    seen_model: set = set()
    seen = owners.SeenLaunches(batches=len(batches) + 1)
    for chunk in batches:
        frame = pl.DataFrame(
            {"pid": [p for p, _ in chunk], "correlation_id": [c for _, c in chunk]},
            schema={"pid": pl.Int64, "correlation_id": pl.Int64},
        )
        keys = [(-1 if p is None else p, -1 if c is None else c) for p, c in chunk]
        assert seen.fresh(frame).tolist() == [k not in seen_model for k in keys]
        seen_model.update(keys)


@pytest.mark.parametrize("name", ["tiny_vlm", "tp_train"])
def test_sampled_correlation_ids_find_every_chunks_calls(trace_paths, loaded, monkeypatch, name):
    """Correlation ids sampled every few runtime rows bound each chunk's calls: with two processes
    writing calls side by side too, no chunk has to search the whole runtime table."""
    monkeypatch.setattr(chunks, "CALL_SAMPLE_ROWS", 16)
    whole_table_reads = []
    fetch_rows = tables.fetch_rows

    def counting(uri, path, table, columns, **kw):
        if table == tables.RUNTIME_TABLE and kw.get("rowids") is None:
            whole_table_reads.append(kw["where"])
        return fetch_rows(uri, path, table, columns, **kw)

    monkeypatch.setattr(tables, "fetch_rows", counting)
    chunked = postprocess.load(trace_paths[name], chunk_ops=50)
    assert chunks_of(chunked) > 10
    assert whole_table_reads == []
    assert_same_numbers(loaded[name], chunked)


def test_calls_outside_the_sampled_span_are_still_found(trace_paths, loaded, monkeypatch):
    """Samples that say nothing true (every id 0) give spans holding no call: each chunk then
    searches the whole runtime table, and the numbers stay exact."""
    of = chunks._CallSamples.of

    def lying(path, rowids):
        samples = of(path, rowids)
        return dataclasses.replace(samples, corr=np.zeros_like(samples.corr))

    monkeypatch.setattr(chunks._CallSamples, "of", staticmethod(lying))
    assert_same_numbers(loaded["tiny_vlm"], postprocess.load(trace_paths["tiny_vlm"], chunk_ops=400))


def test_call_spans_from_samples_per_process():
    """Two processes write calls side by side, each numbering its own: a process's span runs from
    its sample before the first id to its sample after the last; a process never sampled, or ids
    past every sample, reach the table's ends."""
    rows = [(1, 10), (5, 20), (9, 30), (13, 40)]  # process A's samples (rowid, correlation id)
    rows += [(3, 7), (7, 8), (11, 9)]  # process B's: ids far below A's, on the rows between
    rows.sort()
    pid_a, pid_b, pid_c = 1 << 24, 2 << 24, 3 << 24
    samples = chunks._CallSamples(
        rowid=np.array([r for r, _ in rows]),
        pid=np.array([pid_a if c >= 10 else pid_b for _, c in rows]),
        corr=np.array([c for _, c in rows]),
        first=1,
        last=16,
    )

    def span(*ops):
        return samples.span(
            pl.DataFrame(ops, schema={"global_pid": pl.Int64, "correlation_id": pl.Int64}, orient="row")
        )

    assert span((pid_a, 21), (pid_a, 29)) == (5, 9)
    assert span((pid_a, 20), (pid_a, 30)) == (1, 13)
    assert span((pid_a, 21), (pid_b, 8)) == (3, 11)
    assert span((pid_a, 41)) == (13, 16)  # past A's last sample: to the end
    assert span((pid_b, 1)) == (1, 3)  # before B's first sample: from the start
    assert span((pid_c, 5)) == (1, 16)  # never sampled: the whole table
    assert span((pid_a, None)) == (1, 0)  # no id, no call to look for
