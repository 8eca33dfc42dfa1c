"""Bad and hostile torch.profiler traces: exit 2 with one line, or a report with notes; never a
traceback. Hypothesis writes traces of random events (names of any text, odd numbers) and damages
real bytes; the reader's block boundaries never change a number."""

from __future__ import annotations

import gzip
import json
import lzma
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagemfu import postprocess
from stagemfu.cli import cli
from stagemfu.errors import TraceError
from stagemfu.postprocess.kineto import read_kineto
from stagemfu.postprocess.kineto.build import Collector
from stagemfu.postprocess.kineto.scan import scan_events

KINETO = FIXTURES / "llama_train.pt.trace.json.gz"
PID = 700
HYPOTHESIS = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])


def annotation(name: str, ts: float | str, dur: float | str, tid: int = PID) -> dict:
    return {"ph": "X", "cat": "user_annotation", "name": name, "pid": PID, "tid": tid, "ts": ts, "dur": dur}


def launch(corr: int, ts: float | str, dur: float | str = 1, tid: int = PID) -> dict:
    args = {"correlation": corr}
    return {
        "ph": "X",
        "cat": "cuda_runtime",
        "name": "cudaLaunchKernel",
        "pid": PID,
        "tid": tid,
        "ts": ts,
        "dur": dur,
        "args": args,
    }


def kernel(name: str, corr: int | None, ts: float | str, dur: float | str, cat: str = "kernel") -> dict:
    args = {"device": 0, "stream": 7, **({"correlation": corr} if corr is not None else {})}
    return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": dur, "args": args}


def write(path: Path, events: list[dict], **header: object) -> Path:
    doc = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "numSms": 132}]}
    path.write_text(json.dumps({**doc, **header, "traceEvents": events}, indent=1))
    return path


def small_trace(path: Path, name: str = "step") -> Path:
    """One stage; two kernels it launched, one launched outside it, one without a correlation id."""
    return write(
        path,
        [
            annotation(name, 100.0, 50.0),
            launch(1, 110.0),
            kernel("gemm", 1, 200.0, 10.0),
            launch(2, 120.0),
            kernel('{lambda(int)#1} "quoted"', 2, 205.0, 20.0),
            launch(3, 170.0),
            kernel("late", 3, 300.0, 5.0),
            kernel("orphan", None, 400.0, 5.0),
        ],
    )


def run(*args: str):
    return CliRunner().invoke(cli, [*args])


def assert_one_line_error(result, path: Path, *words: str) -> None:
    assert "Traceback" not in result.output and result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_small_trace_numbers_and_notes(tmp_path):
    st = postprocess.load(small_trace(tmp_path / "t.json"))
    row = st.ranges.row(0, named=True)
    assert (row["gpu_ops"], row["kernel_ns"], row["busy_ns"], row["span_ns"], row["wall_ns"]) == (
        2,
        30_000,
        25_000,
        25_000,
        50_000,
    )
    assert any("1 GPU operation(s) carry no correlation id" in n for n in st.notes)
    assert st.trace.names["name"].to_list().count('{lambda(int)#1} "quoted"') == 1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"a": 1}', ("not a torch.profiler (Kineto) trace", "no traceEvents")),
        ("[1, 2, 3]", ("top level is not an object",)),
        ('{"traceEvents": 5}', ("no traceEvents array",)),
        ('{"traceEvents": [1, 2]}', ("something other than objects",)),
        ('{"traceEvents": [[1]]}', ("something other than objects",)),
        ('{"traceEvents": []}', ("has no GPU operations",)),
        ('{"meta": {"traceEvents": [{"ph": "X"}]}}', ("no traceEvents array",)),
        ('{"traceEvents": [{"ph": "X"}]} trailing', ("not valid JSON",)),
        ('{"traceEvents": [{"ph": "X"', ("cut short",)),
        ('{"traceEvents": [{"ph": "X"}], "x": ', ("not valid JSON",)),
    ],
)
def test_json_that_is_not_a_kineto_trace_exits_2_with_one_line(tmp_path, text, words):
    path = tmp_path / "trace.json"
    path.write_text(text)
    assert_one_line_error(run("postprocess", str(path)), path, *words)


def test_truncated_gzip_exits_2_with_one_line(tmp_path):
    path = tmp_path / "rank0.pt.trace.json.gz"
    data = KINETO.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("postprocess", str(path)), path, "cannot be read", "complete file")


def test_damaged_xz_exits_2_with_one_line(tmp_path):
    path = tmp_path / "trace.json.xz"
    data = bytearray(lzma.compress(small_trace(tmp_path / "t.json").read_bytes()))
    data[40:60] = b"\x00" * 20
    path.write_bytes(bytes(data))
    assert_one_line_error(run("postprocess", str(path)), path, "cannot be read")


def test_events_without_correlation_or_calls_give_a_report_with_notes(tmp_path):
    path = write(
        tmp_path / "t.json", [annotation("step", 0.0, 10.0), kernel("k", None, 1.0, 2.0), kernel("j", 9, 3, 1)]
    )
    result = run("postprocess", str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["unattributed"]["gpu_ops"] == 2 and doc["ranges"][0]["gpu_ops"] == 0
    assert any("carry no correlation id" in n for n in doc["notes"])


HOSTILE = [
    'a"b',
    "back\\slash\\",
    "brace { [ ] }",
    '"traceEvents": [',
    "<script>alert(1)</script>",
    "new\nline",
    "é ü ∑",
]


def hostile_names_trace(path: Path) -> Path:
    """Each hostile name as a stage and as the kernel it launched."""
    events = [annotation(n, 10.0 * i, 5.0) for i, n in enumerate(HOSTILE)]
    events += [launch(i + 1, 10.0 * i + 1) for i in range(len(HOSTILE))]
    events += [kernel(n, i + 1, 1000.0 + i, 1.0) for i, n in enumerate(HOSTILE)]
    return write(path, events)


def test_hostile_names_are_read_exactly_and_escaped_on_output(tmp_path):
    names = HOSTILE
    path = hostile_names_trace(tmp_path / "t.json")
    st = postprocess.load(path)
    assert sorted(st.ranges["name"].to_list()) == sorted(names)
    assert set(st.trace.names["name"]) == set(names)
    assert (st.ranges["kernels"] == 1).all()
    for fmt in ("table", "md", "csv", "json"):
        result = run("postprocess", str(path), "--format", fmt)
        assert result.exit_code == 0 and "Traceback" not in result.output
    assert (
        "<script>"
        not in run("report", str(path), "--flops", str(flops_file(tmp_path, names[4])), "--format", "md").output
    )


def flops_file(tmp_path: Path, stage: str) -> Path:
    path = tmp_path / "flops.json"
    path.write_text(json.dumps({stage: 1e9}))
    return path


def test_invalid_utf8_is_read_with_replacement_characters(tmp_path):
    path = small_trace(tmp_path / "t.json", name="stepXX")
    path.write_bytes(path.read_bytes().replace(b"stepXX", b"step\xff\xfe"))
    st = postprocess.load(path)
    assert st.ranges["name"].to_list() == ["step\ufffd\ufffd"]


def test_bom_and_escaped_unicode_names(tmp_path):
    path = tmp_path / "t.json"
    small_trace(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b'"name": "step"', b'"name": "st\\u00e9p\\n"'))
    assert postprocess.load(path).ranges["name"].to_list() == ["st\u00e9p\n"]


def test_numbers_of_the_wrong_type_read_as_missing(tmp_path):
    events = [annotation("step", 0.0, 100.0), launch(1, 1.0), kernel("k", 1, 200, 10)]
    events += [annotation("bad", "soon", [1]), launch("x", 2.0), kernel(["odd"], {"a": 1}, 300, None)]
    st = postprocess.load(write(tmp_path / "t.json", events))
    step = st.ranges.filter(pl.col("name") == "step").row(0, named=True)
    assert step["kernel_ns"] == 10_000 and step["gpu_ops"] == 1
    assert any("without a readable ts" in n for n in st.notes)


def test_chunk_ops_is_noted_as_not_applying(tmp_path):
    trace = read_kineto(small_trace(tmp_path / "t.json"), chunk_ops=1000)
    assert any("--chunk-ops does not apply" in n for n in trace.notes)


def read_in_blocks(path: Path, block_bytes: int):
    collector = Collector()
    header = scan_events(path, collector.add, block_bytes=block_bytes)
    return collector.trace(path, header)


def same_trace(a, b) -> bool:
    return a.ops.held.equals(b.ops.held) and a.ranges.equals(b.ranges) and a.names.equals(b.names)


@pytest.mark.parametrize("block_bytes", [65536, 300_000])
def test_block_boundaries_never_change_the_trace(block_bytes):
    whole, cut = postprocess.read(KINETO), read_in_blocks(KINETO, block_bytes)
    assert same_trace(cut, whole) and cut.gpus.equals(whole.gpus)


@HYPOTHESIS
@given(block_bytes=st.integers(16, 3000))
def test_block_boundaries_inside_escapes_braces_and_names_change_nothing(tmp_path, block_bytes):
    path = hostile_names_trace(tmp_path / "t.json")
    assert same_trace(read_in_blocks(path, block_bytes), postprocess.read(path))


def test_an_event_larger_than_the_block_grows_the_buffer(tmp_path):
    path = small_trace(tmp_path / "t.json", name="x" * 100_000)
    assert read_in_blocks(path, 256).ranges["name"].str.len_chars().to_list() == [100_000]


NAMES = st.text(min_size=0, max_size=30)
# Times as the JSON text to write (unquoted by _numbers_unquoted); None writes null.
TIMES = st.one_of(
    st.integers(-(10**3), 10**16).map(str),
    st.decimals(-1000, 10**13, places=3, allow_nan=False).map(str),
    st.just("1e3"),
    st.none(),
)


@HYPOTHESIS
@given(names=st.lists(NAMES, min_size=1, max_size=6), ts=st.lists(TIMES, min_size=4, max_size=12), data=st.data())
def test_random_events_give_a_report_or_one_error_line(tmp_path, names, ts, data):
    events = []
    for i, t in enumerate(ts):
        value = t
        kind = data.draw(st.sampled_from(["annotation", "launch", "kernel", "memcpy"]))
        name = names[i % len(names)]
        if kind == "annotation":
            events.append(annotation(name, value, data.draw(TIMES)))
        elif kind == "launch":
            events.append(launch(data.draw(st.integers(-5, 2**45)), value))
        else:
            cat = "kernel" if kind == "kernel" else "gpu_memcpy"
            events.append(
                kernel(name, data.draw(st.one_of(st.none(), st.integers(0, 20))), value, data.draw(TIMES), cat)
            )
    path = tmp_path / "fuzz.json"
    path.write_text(_numbers_unquoted(json.dumps({"traceEvents": events})))
    result = run("postprocess", str(path), "--format", "json")
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert len(result.stderr.splitlines()) == 1


def _numbers_unquoted(text: str) -> str:
    """json.dumps wrote the decimal times as strings: they become JSON numbers again ("1e3" stays a string)."""
    return re.sub(r'"(ts|dur)": "(-?\d+(?:\.\d+)?)"', r'"\1": \2', text)


@HYPOTHESIS
@given(cut=st.integers(0, 5000), flips=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=8))
def test_damaged_bytes_give_a_report_or_one_error_line(tmp_path, cut, flips):
    data = bytearray(small_trace(tmp_path / "t.json").read_bytes())
    for at, value in flips:
        if at < len(data):
            data[at] = value
    path = tmp_path / "damaged.json"
    path.write_bytes(bytes(data[: max(cut, 1)] if cut < len(data) else data))
    result = run("postprocess", str(path), "--format", "json")
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert len(result.stderr.splitlines()) == 1


@HYPOTHESIS
@given(data=st.binary(min_size=1, max_size=300))
def test_random_gzip_members_never_raise_anything_but_trace_errors(tmp_path, data):
    path = tmp_path / "x.json.gz"
    path.write_bytes(gzip.compress(b'{"traceEvents": [' + data))
    try:
        read_kineto(path)
    except TraceError as err:
        assert "\n" not in str(err)


def test_progress_counts_bytes_of_the_file_as_stored():
    calls = []
    header = scan_events(KINETO, lambda _: None, block_bytes=1 << 20, progress=lambda *a: calls.append(a))
    assert header["schemaVersion"] == 1
    assert [c[0] for c in calls] == [f"reading {KINETO.name}"] * len(calls) and len(calls) >= 5
    done = [c[1] for c in calls]
    assert done == sorted(done) and done[-1] <= calls[-1][2] == KINETO.stat().st_size


def test_white_space_between_events_never_fills_the_buffer(tmp_path, monkeypatch):
    """Only an event is carried from one block to the next: a flood of spaces is checked and dropped."""
    monkeypatch.setattr("stagemfu.postprocess.kineto.scan.MAX_EVENT_BYTES", 1 << 16)
    path = small_trace(tmp_path / "t.json")
    path.write_text(path.read_text().replace('"traceEvents": [', '"traceEvents": [' + " " * 300_000, 1))
    assert read_in_blocks(path, 4096).ranges["name"].to_list() == ["step"]
