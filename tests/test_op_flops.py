"""FLOPs counted from op ranges, on synthetic exports whose FLOPs are worked out by hand
(``op_traces``): the innermost rule, the autograd thread, coverage, instances, malformed names,
convolution output shapes, the report and its command line."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import launch
from op_traces import (
    ADDMM,
    EXPECTED_COVERED_NS,
    EXPECTED_FLOPS,
    EXPECTED_KERNEL_NS,
    MAIN,
    training_step,
)

from stagemfu import report as rp
from stagemfu.analyzer.op_formulas import OP_FORMULAS
from stagemfu.cli import cli
from stagemfu.postprocess import read
from stagemfu.postprocess.op_ranges import op_ranges
from stagemfu.report.op_flops import OUTSIDE_OPS, UNCOUNTABLE, count_op_flops

H100 = [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "smCount": 132, "clockRate": 1980000000}]


@pytest.fixture
def step_trace(make_trace, tmp_path):
    return training_step(make_trace, tmp_path, gpus=H100)


def stage_rows(rep) -> dict[str, dict]:
    return {r["stage"]: r for r in rep.stages.iter_rows(named=True)}


def test_stage_flops_are_the_hand_counted_sum_of_their_ops(step_trace):
    rows = stage_rows(rp.report(step_trace, op_flops=True))
    assert {s: r["flops"] for s, r in rows.items()} == EXPECTED_FLOPS
    # linear runs addmm: counted once, at addmm; attention with 8 query heads over 2 kv heads
    assert rows["forward"]["flops"] == ADDMM + 2 * 8 * 4 * 4 * 32


def test_backward_ops_on_the_autograd_thread_count_for_the_main_thread_backward(step_trace):
    rows = stage_rows(rp.report(step_trace, op_flops=True))
    assert rows["backward"]["flops"] == EXPECTED_FLOPS["backward"] > 0
    assert rows["backward"]["kernel_ns"] == EXPECTED_KERNEL_NS["backward"]  # its kernels too (process rule)


def test_coverage_is_kernel_time_inside_counted_ops(step_trace):
    rep = rp.report(step_trace, op_flops=True)
    rows = stage_rows(rep)
    for stage, covered in EXPECTED_COVERED_NS.items():
        assert rows[stage]["kernel_ns"] == EXPECTED_KERNEL_NS[stage]
        assert rows[stage]["flops_coverage"] == pytest.approx(covered / EXPECTED_KERNEL_NS[stage])
    uncounted = rep.uncounted_ops.filter(pl.col("stage") == "backward")
    assert uncounted.select("op", "kernel_ns").rows() == [("aten::mm" + UNCOUNTABLE, 7), ("aten::sum", 5)]
    assert rep.uncounted_ops.filter(pl.col("stage") == "optimizer")["kernel_share"].to_list() == [1.0]


def test_times_come_from_the_instances_holding_op_ranges(step_trace):
    rep = rp.report(step_trace, op_flops=True)
    rows = stage_rows(rep)
    assert rows["forward"]["instances"] == 1 and rows["forward"]["wall_ns"] == 400  # not the plain step's
    assert rows["step"]["instances"] == 1 and rows["step"]["wall_ns"] == 1000
    assert rows["forward"]["mfu_kernel"] == pytest.approx(
        EXPECTED_FLOPS["forward"] / (EXPECTED_KERNEL_NS["forward"] * 989.4e3)
    )
    assert any("'forward' 1 of 2" in n and "'step' 1 of 2" in n for n in rep.notes)


def test_uncountable_and_outside_ops_are_noted(step_trace):
    notes = rp.report(step_trace, op_flops=True).notes
    assert any("1 aten::mm: unreadable input sizes" in n for n in notes)
    assert any("1 counted op(s), 16 FLOPs, ran outside every stage" in n for n in notes)


def test_an_op_nested_in_another_counted_op_counts_once(make_trace, tmp_path):
    ranges = [
        {"text": "step", "start": 0, "end": 100, "tid": MAIN},
        {"text": "aten::matmul, seq = 1, op_id = 1, sizes = [[4, 8], [8, 2]]", "start": 10, "end": 50, "tid": MAIN},
        {"text": "aten::mm, seq = 1, op_id = 2, sizes = [[4, 8], [8, 2]]", "start": 20, "end": 40, "tid": MAIN},
        {"text": "aten::matmul, seq = 2, op_id = 3, sizes = [[2, 3], [3, 5]]", "start": 60, "end": 90, "tid": MAIN},
    ]
    rows = stage_rows(rp.report(make_trace(tmp_path, ranges=ranges, gpus=H100), op_flops=True))
    # the first matmul counts through its mm; the second has nothing below it and counts itself
    assert rows["step"]["flops"] == 2 * 4 * 8 * 2 + 2 * 2 * 3 * 5


def test_a_convolution_takes_its_output_shape_from_the_op_that_used_it(make_trace, tmp_path):
    conv = [  # conv2d > convolution > _convolution > cudnn_convolution; relu consumes conv2d's output
        ("aten::conv2d, seq = 1, op_id = 1, sizes = [[2, 3, 8, 8], [4, 3, 3, 3], [4], [], [], [], []]", 10, 90),
        ("aten::convolution, op_id = 2, sizes = [[2, 3, 8, 8], [4, 3, 3, 3], [4], [], [], [], [], [], []]", 12, 88),
        ("aten::_convolution, op_id = 3, sizes = [[2, 3, 8, 8], [4, 3, 3, 3], [4], [], [], [], [], [], []]", 14, 86),
        ("aten::cudnn_convolution, op_id = 4, sizes = [[2, 3, 8, 8], [4, 3, 3, 3], [], [], [], [], [], []]", 16, 60),
        ("aten::relu, seq = 2, op_id = 5, sizes = [[2, 4, 4, 4]], input_op_ids = [(1,0)]", 100, 110),
        ("aten::cudnn_convolution, op_id = 6, sizes = [[2, 3, 8, 8], [4, 3, 3, 3], [], [], [], [], [], []]", 120, 130),
    ]
    ranges = [{"text": "forward", "start": 0, "end": 200, "tid": MAIN}]
    ranges += [{"text": text, "start": s, "end": e, "tid": MAIN} for text, s, e in conv]
    rep = rp.report(make_trace(tmp_path, ranges=ranges, gpus=H100), op_flops=True)
    # stride 2 shows only in the output: 4x4 positions x 2 samples x 4 filters of 3x3x3
    assert stage_rows(rep)["forward"]["flops"] == 2 * 2 * 4 * 3 * 9 * 16
    assert any("aten::cudnn_convolution: convolution: the output shape is needed" in n for n in rep.notes)


def test_formulas_can_be_swapped_by_op_name(step_trace):
    opr = op_ranges(read(step_trace))
    doubled = count_op_flops(opr, formulas={**OP_FORMULAS, "aten::addmm": lambda inputs, output: 2 * ADDMM})
    plain = count_op_flops(opr)
    assert doubled.instances["flops"].sum() - plain.instances["flops"].sum() == 2 * ADDMM  # step and forward


def test_the_plain_step_counts_its_kernels_outside_op_ranges(make_trace, tmp_path):
    call, kernel = launch(9, (15, 16), (1000, 1040), tid=MAIN)
    ranges = [
        {"text": "forward", "start": 0, "end": 100, "tid": MAIN},
        {"text": "aten::mm, op_id = 1, sizes = [[2, 2], [2, 2]]", "start": 20, "end": 30, "tid": MAIN},
    ]
    rep = rp.report(make_trace(tmp_path, ranges=ranges, calls=[call], kernels=[kernel], gpus=H100), op_flops=True)
    assert rep.uncounted_ops.select("op", "kernel_ns").rows() == [(OUTSIDE_OPS, 40)]
    assert stage_rows(rep)["forward"]["flops_coverage"] == 0.0
    assert any("'forward': 100 % of its kernel time was launched outside op ranges" in n for n in rep.notes)


def test_report_json_says_the_flops_come_from_ops(step_trace):
    result = CliRunner().invoke(cli, ["report", str(step_trace), "--op-flops", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "stagemfu.report/1" and doc["flops_source"]["kind"] == "ops"
    row = next(r for r in doc["stages"] if r["stage"] == "forward")
    assert row["flops"] == row["flops_ops"] == EXPECTED_FLOPS["forward"] and row["instances"] == 1
    assert row["flops_coverage"] == pytest.approx(150 / 160)
    assert {"stage": "backward", "op": "aten::sum", "kernel_ns": 5} in [
        {k: r[k] for k in ("stage", "op", "kernel_ns")} for r in doc["uncounted_ops"]
    ]


def test_terminal_report_shows_coverage_and_uncounted_ops(step_trace):
    result = CliRunner().invoke(cli, ["report", str(step_trace), "--op-flops"])
    assert result.exit_code == 0, result.output
    assert "FLOP cover %" in result.output and "Kernel time outside counted ops" in result.output
    assert "aten::_foreach_add_" in result.output


def test_op_flops_without_op_ranges_is_a_one_line_error(make_trace, tmp_path):
    path = make_trace(tmp_path, ranges=[{"text": "forward", "start": 0, "end": 10}], gpus=H100)
    result = CliRunner().invoke(cli, ["report", str(path), "--op-flops"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "holds no op ranges" in result.stderr and "emit_nvtx" in result.stderr


def test_sqlite_output_holds_the_uncounted_ops(step_trace, tmp_path):
    import sqlite3

    db = tmp_path / "report.db"
    result = CliRunner().invoke(cli, ["report", str(step_trace), "--op-flops", "--format", "sqlite", "-o", str(db)])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT op, kernel_ns FROM uncounted_ops WHERE stage = 'optimizer'").fetchall()
        coverage = conn.execute("SELECT flops_coverage FROM stages WHERE stage = 'forward'").fetchone()[0]
    assert rows == [("aten::_foreach_add_", 20)] and coverage == pytest.approx(150 / 160)
