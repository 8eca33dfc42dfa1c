"""torch.profiler (Kineto) traces: the recorded Llama training steps give the same numbers as an
independent computation, as Kineto's own GPU annotations, as HolisticTraceAnalysis, and as nsys.

``tests/fixtures/traces/llama_train.pt.trace.json.gz`` was recorded on an H200 with
``torch.profiler.profile(activities=[CPU, CUDA], record_shapes=True)`` around a warm-up step and
three training steps (``tests/fixtures/workloads/llama_train.py kineto``); ``llama_train.sqlite.xz``
is the same workload under nsys (three plain steps, then two under ``emit_nvtx``).

The independent computation below reads the JSON with :mod:`json` (times as :class:`Decimal`, so
no float is involved) and applies the definitions of ARCHITECTURE.md event by event in Python.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from functools import cache

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import FIXTURES, ROOT

from stagemfu import postprocess
from stagemfu.cli import cli
from stagemfu.postprocess.kineto.events import to_ns

KINETO = FIXTURES / "llama_train.pt.trace.json.gz"
NSYS = FIXTURES / "llama_train.sqlite.xz"
HTA = FIXTURES / "llama_train.hta.json"
GPU_OP_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
CALL_CATEGORIES = ("cuda_runtime", "cuda_driver")


@cache
def events() -> list[dict]:
    with gzip.open(KINETO, "rt") as fh:
        return json.load(fh, parse_float=Decimal)["traceEvents"]


def ns(us: Decimal | int) -> int:
    """The rounding rule, written independently: microseconds to the nearest nanosecond."""
    return int((Decimal(us) * 1000).to_integral_value(ROUND_HALF_UP))


def union(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total, end = total + e - s, e
        elif e > end:
            total, end = total + e - end, e
    return total


@cache
def expected_instances(launches: str = "thread") -> list[dict]:
    """Every user_annotation instance with its numbers, by the definitions, one event at a time."""
    calls = {e["args"]["correlation"]: e for e in events() if e.get("cat") in CALL_CATEGORIES}
    ops = [e for e in events() if e.get("cat") in GPU_OP_CATEGORIES]
    out = []
    for a in (e for e in events() if e.get("cat") == "user_annotation"):
        start, end = ns(a["ts"]), ns(a["ts"]) + ns(a["dur"])
        mine = []
        for op in ops:
            call = calls.get(op["args"].get("correlation"))
            if call is None or call["pid"] != a["pid"]:
                continue
            c_start, c_end = ns(call["ts"]), ns(call["ts"]) + ns(call["dur"])
            same_thread = call["tid"] == a["tid"]
            # --launches process: a call on another thread counts for the main thread's ranges open when it started
            other = launches == "process" and a["tid"] == a["pid"] and call["tid"] != a["tid"]
            if same_thread and start <= c_start and c_end <= end or other and start <= c_start < end:
                mine.append(op)
        spans = [(ns(o["ts"]), ns(o["ts"]) + ns(o["dur"])) for o in mine]
        out.append(
            {
                "name": a["name"],
                "start_ns": start,
                "wall_ns": end - start,
                "gpu_ops": len({o["args"]["correlation"] for o in mine}),
                "kernels": sum(o["cat"] == "kernel" for o in mine),
                "kernel_ns": sum(e - s for (s, e), o in zip(spans, mine) if o["cat"] == "kernel"),
                "busy_ns": union(spans),
                "span_ns": max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0,
            }
        )
    return out


COLUMNS = ("wall_ns", "gpu_ops", "kernels", "kernel_ns", "busy_ns", "span_ns")


@pytest.mark.parametrize("launches", ["thread", "process"])
def test_every_instance_equals_the_independent_computation(launches):
    st = postprocess.load(KINETO, launches=launches)
    ours = {(r["name"], r["start_ns"]): r for r in st.instances.iter_rows(named=True)}
    expected = expected_instances(launches)
    assert len(ours) == len(expected) == 26
    for want in expected:
        got = ours[(want["name"], want["start_ns"])]
        assert {c: got[c] for c in COLUMNS} == {c: want[c] for c in COLUMNS}, want["name"]


def test_per_stage_sums_equal_the_independent_computation():
    st = postprocess.load(KINETO)
    sums: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    for inst in expected_instances():
        for c in COLUMNS:
            sums[inst["name"]][c] += inst[c]
    got = {r["name"]: {c: r[c] for c in COLUMNS} for r in st.ranges.iter_rows(named=True)}
    assert got == dict(sums)
    assert got["forward"]["kernels"] > 0 and got["optimizer"]["gpu_ops"] > 0


def test_span_agrees_with_kinetos_gpu_user_annotations():
    """Kineto draws, for some annotations, one gpu_user_annotation per stream from 1 ns before the
    first GPU operation launched inside it (on its thread) to 1 ns after the last: over the streams,
    that is the span, widened by 2 ns."""
    by_id = {e["args"]["External id"]: e for e in events() if e.get("cat") == "user_annotation"}
    drawn: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for gpu in (e for e in events() if e.get("cat") == "gpu_user_annotation"):
        drawn[gpu["args"]["External id"]].append((ns(gpu["ts"]), ns(gpu["ts"]) + ns(gpu["dur"])))
    st = postprocess.load(KINETO)
    span = {(r["name"], r["start_ns"]): r["span_ns"] for r in st.instances.iter_rows(named=True)}
    for external_id, streams in drawn.items():
        cpu = by_id[external_id]
        kineto_span = max(e for _, e in streams) - min(s for s, _ in streams) - 2
        assert span[(cpu["name"], ns(cpu["ts"]))] == kineto_span, cpu["name"]
    assert len(drawn) == 12 and sum(map(len, drawn.values())) == 13


def test_kernel_time_per_kernel_equals_holistic_trace_analysis():
    """HTA's kernel breakdown (bench/hta_figures.py, committed) per kernel name, memsets included."""
    hta = json.loads(HTA.read_text())
    trace = postprocess.read(KINETO)
    ops = trace.ops.held.join(trace.names, on="name_id").with_columns(ns=pl.col("end") - pl.col("start"))
    ours = ops.group_by("name").agg(
        pl.len().alias("count"),
        pl.col("ns").sum().alias("sum_ns"),
        pl.col("ns").min().alias("min_ns"),
        pl.col("ns").max().alias("max_ns"),
    )
    assert {r.pop("name"): r for r in ours.iter_rows(named=True)} == hta["kernels"]
    st = postprocess.load(KINETO)
    assert st.totals["span_ns"].item() == hta["kernel_time_ns"]


def test_nsys_and_kineto_agree_on_per_stage_kernel_time_within_2_percent():
    """Same workload, two profilers: the three plain steps of each (docs/kineto.md)."""
    stages = ("step", "forward", "backward", "optimizer")

    def plain_steps(path) -> dict[str, int]:
        st = postprocess.load(path, within="measured", launches="process")
        inst = st.instances.filter(pl.col("name").is_in(stages))
        steps = inst.filter(pl.col("name") == "step").sort("start_ns").head(3)
        inside = inst.filter(pl.col("start_ns").is_between(steps["start_ns"].min(), steps["end_ns"].max()))
        return dict(inside.group_by("name").agg(pl.col("kernel_ns").sum()).rows())

    kineto, nsys = plain_steps(KINETO), plain_steps(NSYS)
    for stage in stages:
        assert kineto[stage] == pytest.approx(nsys[stage], rel=0.02), stage
    assert kineto["backward"] > kineto["forward"]  # the autograd thread's kernels count (--launches process)


def test_gpu_comes_from_device_properties_and_json_names_the_format():
    result = CliRunner().invoke(cli, ["postprocess", str(KINETO), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "stagemfu.postprocess/1"
    assert doc["trace"]["format"] == "kineto" and doc["trace"]["tool_version"] == "1"
    assert doc["trace"]["cupti_version"] == "130001"
    assert doc["gpus"] == [{"id": 0, "name": "NVIDIA H200", "sms": 132, "clock_hz": None}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5545351487731.043", 5545351487731043),  # float64 would be off by up to 0.5 ns here
        ("1712195495505543.2", 1712195495505543200),  # epoch microseconds: a float64 keeps 0.25 us steps
        ("12", 12000),
        ("1.2345", 1235),  # halves away from zero
        ("1.23449", 1234),
        ("-1.0005", -1001),
        ("0.0004", 0),
        ("1.5e3", 1500000),  # exponent form: through a float
        ("abc", None),
        ("99999999999999999999.5", None),
    ],
)
def test_microseconds_become_nanoseconds_by_the_rounding_rule(text, expected):
    assert pl.DataFrame({"t": [text]}).select(to_ns("t")).item() == expected


def test_bench_inflates_a_kineto_trace_exactly(tmp_path):
    """``bench/inflate_kineto.py`` (what the benchmark runs on): N copies give N times every stage total."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from inflate_kineto import inflate_kineto
    finally:
        sys.path.remove(str(ROOT / "bench"))
    inflate_kineto(KINETO, tmp_path / "x3.pt.trace.json.gz", 3)
    one, three = postprocess.load(KINETO).ranges, postprocess.load(tmp_path / "x3.pt.trace.json.gz").ranges
    columns = ["instances", "wall_ns", "span_ns", "busy_ns", "kernel_ns", "gpu_ops", "kernels"]
    assert three.select("name", *(pl.col(c) // 3 for c in columns)).equals(one.select("name", *columns))
    assert three.select((pl.col(c) % 3 == 0).all() for c in columns).row(0) == (True,) * len(columns)


def test_kinetos_memcpy_and_memset_names_are_copies():
    """Kineto names them "Memcpy DtoD (Device -> Device)" and "Memset (Device)" (nsys: "[CUDA memcpy ...]")."""
    st = postprocess.load(FIXTURES.parent / "corpus" / "hta_ddp_v100_ns_resolution.pt.trace.json.gz")
    copies = st.kernels.filter(pl.col("kind") != "kernel")
    assert set(copies["kernel"]) == {"Memcpy DtoD (Device -> Device)", "Memset (Device)"}
    assert set(copies["category"]) == {"copy"}
    assert "copy" not in set(st.kernels.filter(pl.col("kind") == "kernel")["category"])
