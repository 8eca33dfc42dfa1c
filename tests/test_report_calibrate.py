"""Calibration check: the report's kernel-time MFU against CUDA-event MFU on GEMMs of known FLOPs.

The GPU run itself (``stagemfu calibrate``) happens on the GPU machine; these tests check the
comparison on traces shaped like the workload's, and the workload's pure parts.
"""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from conftest import launch
from report_traces import write_json

from stagemfu.cli import cli
from stagemfu.errors import StagemfuError
from stagemfu.report.calibrate import check_calibration
from stagemfu.report.calibrate_workload import gemm_flops, parse_shapes, range_name
from stagemfu.schemas import CALIBRATION_WORKLOAD as WORKLOAD_SCHEMA


def workload_trace(make_trace, directory):
    """warmup, then measured ⊃ {gemm_4x4x4: 2 kernels of 5,000 ns; gemm_2x2x2: 1 kernel of 1,000 ns}."""
    pairs = [
        launch(1, (10, 11), (20, 30), name="warm"),
        launch(2, (110, 111), (200, 5200), name="sm90_xmma_gemm_bf16"),
        launch(3, (120, 121), (5200, 10200), name="sm90_xmma_gemm_bf16"),
        launch(4, (20010, 20011), (20100, 21100), name="sm90_xmma_gemm_bf16"),
    ]
    return make_trace(
        directory,
        calls=[c for c, _ in pairs],
        kernels=[k for _, k in pairs],
        ranges=[
            {"start": 0, "end": 50, "text": "warmup"},
            {"start": 100, "end": 30000, "text": "measured"},
            {"start": 105, "end": 130, "text": "gemm_4x4x4"},
            {"start": 20000, "end": 20020, "text": "gemm_2x2x2"},
        ],
        gpus=[{"id": 0, "name": "NVIDIA H100 80GB HBM3", "smCount": 132, "clockRate": 1_980_000_000}],
    )


def events(directory, *, small_event_ns):
    gemms = [
        {"range": "gemm_4x4x4", "m": 4, "n": 4, "k": 4, "repeats": 2, "flops": 8_000_000, "event_ns": 10_100},
        {"range": "gemm_2x2x2", "m": 2, "n": 2, "k": 2, "repeats": 1, "flops": 500_000, "event_ns": small_event_ns},
    ]
    return write_json(directory / "events.json", {"schema": WORKLOAD_SCHEMA, "device": "H100", "gemms": gemms})


def test_kernel_mfu_matching_event_mfu_passes(make_trace, tmp_path):
    cal = check_calibration(workload_trace(make_trace, tmp_path), events(tmp_path, small_event_ns=1_010), peak_tflops=1)
    rows = {r["range"]: r for r in cal.gemms.iter_rows(named=True)}
    big = rows["gemm_4x4x4"]
    assert big["kernel_ns"] == 10_000
    assert big["mfu_kernel"] == pytest.approx(0.8)  # 8e6 FLOPs / (10,000 ns x 1,000 FLOPs per ns)
    assert big["mfu_events"] == pytest.approx(8_000_000 / 10_100 / 1000)
    assert big["difference"] == pytest.approx(10_100 / 10_000 - 1)
    assert cal.passed and cal.gemms["agrees"].all() and cal.gemms["plausible"].all()


def test_disagreement_over_two_percent_fails(make_trace, tmp_path):
    cal = check_calibration(workload_trace(make_trace, tmp_path), events(tmp_path, small_event_ns=1_100), peak_tflops=1)
    assert not cal.passed
    assert cal.gemms.filter(~cal.gemms["agrees"])["range"].to_list() == ["gemm_2x2x2"]


def test_implausible_throughput_fails(make_trace, tmp_path):
    # With the H100's real peak these tiny FLOP counts are far below 40 % for the largest GEMM.
    cal = check_calibration(workload_trace(make_trace, tmp_path), events(tmp_path, small_event_ns=1_010))
    assert cal.peak.tflops == 989.4 and not cal.passed
    assert cal.gemms.filter(~cal.gemms["plausible"])["range"].to_list() == ["gemm_4x4x4"]


def test_cli_check_prints_the_verdict_and_exits_3_on_failure(make_trace, tmp_path):
    trace = workload_trace(make_trace, tmp_path)
    ok = events(tmp_path, small_event_ns=1_010)
    result = CliRunner().invoke(cli, ["calibrate", "--check", str(trace), str(ok), "--peak-tflops", "1"])
    assert result.exit_code == 0 and "calibration PASSED" in result.stdout
    md = CliRunner().invoke(cli, ["calibrate", "--check", str(trace), str(ok), "--peak-tflops", "1", "--format", "md"])
    assert "| gemm_4x4x4 |" in md.stdout
    bad = events(tmp_path, small_event_ns=2_000)
    result = CliRunner().invoke(
        cli, ["calibrate", "--check", str(trace), str(bad), "--peak-tflops", "1", "--format", "json"]
    )
    assert result.exit_code == 3 and json.loads(result.stdout)["passed"] is False


def test_events_file_must_be_the_workloads(make_trace, tmp_path):
    with pytest.raises(StagemfuError, match="calibration_workload/1"):
        check_calibration(workload_trace(make_trace, tmp_path), write_json(tmp_path / "e.json", {"gemms": []}))


def test_workload_shapes_and_flops():
    assert parse_shapes("4096, 8192x8192x1024") == ((4096, 4096, 4096), (8192, 8192, 1024))
    assert gemm_flops(8192, 8192, 1024) == 2 * 8192 * 8192 * 1024
    assert range_name(1, 2, 3) == "gemm_1x2x3"
    with pytest.raises(click.BadParameter):
        parse_shapes("12x0x3")


def test_recorded_h100_calibration_passes():
    """The H100 recording (tests/fixtures/calibration, `stagemfu calibrate` under nsys 2025.3.1):
    every GEMM's kernel-time MFU is within 2 % of its CUDA-event MFU, and 8192³ runs near 74 %."""
    from pathlib import Path

    here = Path(__file__).parent / "fixtures" / "calibration"
    result = check_calibration(here / "calibration.sqlite.xz", here / "events.json")
    assert result.passed
    assert result.peak.tflops == pytest.approx(989.4)
    rows = {row["range"]: row for row in result.gemms.iter_rows(named=True)}
    assert set(rows) == {"gemm_6144x6144x6144", "gemm_8192x8192x8192", "gemm_8192x8192x2048"}
    big = rows["gemm_8192x8192x8192"]
    assert big["flops"] == 200 * gemm_flops(8192, 8192, 8192)
    assert big["mfu_kernel"] == pytest.approx(0.739, abs=0.005)
    assert all(abs(row["difference"]) < 0.02 for row in rows.values())
