"""The format-neutral trace: readers register by content, and stage times come from the contract alone.

A toy format registered here (files that start with ``TOY``) builds its Trace in memory: the same
stage times follow as for any nsys export, whether its operations come as one batch or several,
which is what a new reader (Kineto's) relies on.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from stagemfu import postprocess
from stagemfu.errors import TraceError
from stagemfu.postprocess import formats
from stagemfu.postprocess.trace import OPS_SCHEMA, RANGES_SCHEMA, HeldOps, Trace
from stagemfu.report.render.postprocess_data import postprocess_document

PID, MAIN, WORKER = 4000, 4000, 4001


def toy_trace(path: Path, batches: int = 1) -> Trace:
    """Two nested ranges on the main thread, one on a worker thread; four kernels."""
    ranges = pl.DataFrame(
        [
            (1, "", "step", "PushPop", 0, 100, PID, MAIN, None),
            (2, "", "forward", "PushPop", 10, 40, PID, MAIN, None),
            (3, "", "backward", "PushPop", 50, 90, PID, WORKER, None),
        ],
        schema=RANGES_SCHEMA,
        orient="row",
    )
    ops = pl.DataFrame(
        [
            ("kernel", 200, 210, 0, 7, 1, PID, 1, 12, 13, MAIN),
            ("kernel", 205, 220, 0, 8, 2, PID, 1, 20, 21, MAIN),
            ("memcpy", 300, 305, 0, 7, 3, PID, 2, 60, 61, WORKER),
            ("kernel", 400, 450, 0, 7, 4, PID, 1, None, None, None),  # no launching call
        ],
        schema=OPS_SCHEMA,
        orient="row",
    )
    names = pl.DataFrame({"name_id": [1, 2], "name": ["gemm", "[CUDA memcpy Host-to-Device]"]})
    gpus = pl.DataFrame({"id": [0], "name": ["NVIDIA H100 80GB HBM3"], "sms": [132], "clock_hz": [1_980_000_000]})
    return Trace(
        path=path,
        format="toy",
        tool_version="1.0",
        origin="toy 1.0",
        ranges=ranges,
        ops=HeldOps(ops) if batches == 1 else Batches([ops.slice(0, 2), ops.slice(2, 1), ops.slice(3, 1)]),
        names=names,
        gpus=gpus,
    )


@dataclasses.dataclass(frozen=True)
class Batches:
    """Operations in several time-ordered batches, cut where nothing runs (as a large trace's reader gives)."""

    frames: list[pl.DataFrame]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def held(self) -> None:
        return None

    def map(self, fn: Callable, before: Callable, workers: int = 1) -> Iterator:
        for frame in self.frames:
            yield fn(frame, before(frame))


@pytest.fixture
def toy_format(monkeypatch: pytest.MonkeyPatch) -> formats.TraceFormat:
    """The toy format, registered for one test."""
    monkeypatch.setattr(formats, "FORMATS", dict(formats.formats()))
    return formats.register(
        formats.TraceFormat(
            "toy",
            recognises=lambda head, path: head.startswith(b"TOY"),
            read=lambda path, *, chunk_ops, progress, op_ranges: toy_trace(path, batches=chunk_ops or 1),
            suffixes=(".toy",),
        )
    )


def test_a_registered_format_is_chosen_by_content_and_times_follow(toy_format, tmp_path):
    path = tmp_path / "run.bin"  # no suffix the format knows: the first bytes decide
    path.write_bytes(b"TOY trace\n")
    st = postprocess.load(path)
    rows = {r["name"]: r for r in st.instances.iter_rows(named=True)}
    assert (rows["step"]["kernel_ns"], rows["step"]["busy_ns"], rows["step"]["gpu_ops"]) == (25, 20, 2)
    assert (rows["forward"]["exclusive_busy_ns"], rows["forward"]["depth"], rows["forward"]["path"]) == (
        20,
        1,
        "step/forward",
    )
    assert rows["backward"]["gpu_ops"] == 1  # on its own thread
    assert st.unattributed["kernel_ns"].item() == 50
    assert st.trace.metadata() == {"path": str(path), "format": "toy", "tool_version": "1.0"}
    assert postprocess_document(st)["trace"]["format"] == "toy"


def test_compressed_files_are_sniffed_after_decompression(toy_format, tmp_path):
    path = tmp_path / "run.bin.gz"
    path.write_bytes(gzip.compress(b"TOY trace\n"))
    assert postprocess.load(path).trace.format == "toy"


def test_batches_give_the_numbers_of_one_batch(toy_format, tmp_path):
    path = tmp_path / "run.toy"
    path.write_bytes(b"TOY")
    whole, batched = postprocess.load(path), postprocess.load(path, chunk_ops=3)
    assert batched.trace.ops.held is None and batched.ops.is_empty()
    for table in ("instances", "ranges", "paths", "totals", "unattributed", "kernels"):
        assert getattr(whole, table).equals(getattr(batched, table)), table


def test_the_process_launch_rule_uses_the_main_thread_of_the_contract(toy_format, tmp_path):
    path = tmp_path / "run.toy"
    path.write_bytes(b"TOY")
    st = postprocess.load(path, launches="process")
    step = st.instances.filter(pl.col("name") == "step").row(0, named=True)
    assert step["gpu_ops"] == 3  # the worker thread's copy joins the main thread's open range


def test_directories_pick_files_by_every_format_s_suffixes(toy_format):
    assert ".toy" in formats.trace_suffixes() and ".sqlite.xz" in formats.trace_suffixes()


def test_a_second_format_of_the_same_name_is_refused(toy_format):
    with pytest.raises(ValueError, match="two trace formats named 'toy'"):
        formats.register(dataclasses.replace(toy_format, suffixes=()))


def test_a_file_of_no_known_format_is_one_trace_error(tmp_path):
    path = tmp_path / "run.sqlite"
    path.write_bytes(b"PK\x03\x04 a zip archive")
    with pytest.raises(TraceError, match=r"is not an SQLite file"):
        postprocess.read(path)


def test_a_pipe_is_refused_without_being_read(tmp_path):
    path = tmp_path / "trace.sqlite"
    os.mkfifo(path)
    with pytest.raises(TraceError, match="not a regular file"):
        postprocess.read(path)


def test_an_nsys_export_under_any_name_is_read_by_its_content(trace_paths, tmp_path, loaded):
    path = tmp_path / "export.db"
    shutil.copy(trace_paths["named_domain"], path)
    st = postprocess.load(path)
    assert st.trace.format == "nsys" and st.ranges.equals(loaded["named_domain"].ranges)


def test_nsys_ids_are_unpacked_in_the_reader(loaded):
    """The contract holds operating-system ids: no packed globalTid leaves the nsys reader."""
    trace = loaded["tp_train"].trace
    assert set(trace.ranges.columns) == set(RANGES_SCHEMA)
    assert set(trace.ops.held.columns) == set(OPS_SCHEMA)
    pids = sorted(trace.ranges["pid"].unique().to_list())
    assert len(pids) == 2 and all(0 < p < 1 << 24 for p in pids)
    assert set(trace.ops.held["pid"].drop_nulls().unique().to_list()) == set(pids)
    assert trace.metadata()["format"] == "nsys" and trace.metadata()["nsys_version"].startswith("2025.3")
