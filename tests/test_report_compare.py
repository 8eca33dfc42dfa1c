"""``stagemfu compare``: per-stage deltas on every base and the kernels that moved, from reports or traces."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from report_traces import ANALYSIS, generation_trace, write_json

from stagemfu import report
from stagemfu.cli import cli
from stagemfu.errors import StagemfuError
from stagemfu.report.compare import compare_reports, read_report_json, side_from_report


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def pair(make_trace, tmp_path):
    """Two runs of the same generation; in B every decode kernel takes twice as long."""
    a = generation_trace(make_trace, tmp_path)
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b = generation_trace(make_trace, b_dir)
    with sqlite3.connect(b) as db:  # stretch the decode kernels (correlation ids 3 and 4)
        db.execute("UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET end = start + 2 * (end - start) WHERE correlationId >= 3")
    return a, b, write_json(tmp_path / "analysis.json", ANALYSIS)


def test_deltas_per_stage_on_every_base(pair):
    a, b, flops = pair
    ra = report.report(a, flops_file=flops, peak_tflops=1)
    rb = report.report(b, flops_file=flops, peak_tflops=1)
    cmp = compare_reports(side_from_report(ra, "A"), side_from_report(rb, "B"))
    rows = {r["stage"]: r for r in cmp.stages.iter_rows(named=True)}
    decode = rows["decode"]
    assert (decode["kernel_ns_a"], decode["kernel_ns_b"]) == (500, 1000)
    assert decode["kernel_change"] == pytest.approx(1.0)
    assert decode["mfu_kernel_delta"] == pytest.approx(250_000 / 1_000_000 - 250_000 / 500_000)
    assert decode["wall_change"] == pytest.approx(0.0)  # CPU ranges unchanged
    assert rows["prefill"]["mfu_kernel_delta"] == pytest.approx(0.0)
    top = cmp.kernels.row(0, named=True)
    assert (top["stage"], top["kernel"], top["delta_ns"]) == ("decode", "decode_gemv", 500)


def test_report_json_and_trace_can_be_compared_from_the_command_line(pair, tmp_path):
    a, b, flops = pair
    saved = tmp_path / "a.json"
    assert invoke("report", a, "--flops", flops, "--peak-tflops", "1", "--format", "json", "-o", saved).exit_code == 0
    result = invoke("compare", saved, b, "--flops", flops, "--peak-tflops", "1", "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["schema"] == "stagemfu.compare/1"
    decode = next(s for s in doc["stages"] if s["stage"] == "decode")
    assert decode["kernel_change"] == pytest.approx(1.0)
    for fmt, marker in (("table", "MFU per stage"), ("md", "## Time per stage"), ("html", "chart-compare")):
        out = invoke("compare", saved, b, "--flops", flops, "--peak-tflops", "1", "--format", fmt)
        assert out.exit_code == 0 and marker in out.stdout


def test_stage_on_one_side_only_and_different_flops_are_notes(pair, tmp_path):
    a, b, flops = pair
    ra = report.report(a, flops_file=flops, peak_tflops=1)
    other = write_json(tmp_path / "other.json", {"prefill": 1, "decode": 2})
    rb = report.report(b, flops_file=other, peak_tflops=1)
    cmp = compare_reports(side_from_report(ra, "A"), side_from_report(rb, "B"))
    assert cmp.stages["stage"].to_list() == ["prefill", "decode"]
    assert "stage 'vision' is only in A" in cmp.notes
    assert any("'decode': FLOPs differ (250,000 vs 2)" in n for n in cmp.notes)


def test_a_json_that_is_not_a_report_is_refused(tmp_path):
    path = write_json(tmp_path / "x.json", {"schema": "stagemfu.postprocess/1"})
    with pytest.raises(StagemfuError, match="not a stagemfu.report/1 document"):
        read_report_json(path)
