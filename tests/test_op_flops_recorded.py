"""The proof on real data: a Llama-shape training step recorded on an H200 (``llama_train``: 3 plain
steps, then 2 under emit_nvtx(record_shapes=True), backward on autograd's thread), against
torch's FlopCounterMode count of the same step (``llama_train.truth.json``)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import FIXTURES

from stagemfu import postprocess
from stagemfu import report as rp
from stagemfu.postprocess import read
from stagemfu.postprocess.op_ranges import op_ranges
from stagemfu.report.op_flops import count_op_flops

SHAPE_STEPS = 2  # the last two steps of `measured` ran under emit_nvtx


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads((FIXTURES / "llama_train.truth.json").read_text())


@pytest.fixture(scope="module")
def rep(trace_paths):
    return rp.report(trace_paths["llama_train"], op_flops=True)


@pytest.fixture(scope="module")
def rows(rep) -> dict[str, dict]:
    return {r["stage"]: r for r in rep.stages.iter_rows(named=True)}


def test_flops_per_instance_match_torchs_counter(rows, truth):
    for stage in ("forward", "backward", "step"):
        assert rows[stage]["instances"] == SHAPE_STEPS
        assert rows[stage]["flops"] / SHAPE_STEPS == pytest.approx(truth[stage], rel=0.01)
    assert rows["optimizer"]["flops"] == truth["optimizer"] == 0


def test_flops_per_op_match_torchs_counter(trace_paths, truth):
    opc = count_op_flops(op_ranges(read(trace_paths["llama_train"])))
    by_op = dict(opc.ops.group_by("op").agg(pl.col("flops").sum()).iter_rows())  # ops of the two shaped steps
    assert by_op["aten::mm"] == SHAPE_STEPS * (truth["forward_by_op"]["aten.mm"] + truth["backward_by_op"]["aten.mm"])
    attention = "aten._scaled_dot_product_cudnn_attention"
    assert by_op[f"aten::{attention[5:]}"] == SHAPE_STEPS * truth["forward_by_op"][attention]
    assert by_op[f"aten::{attention[5:]}_backward"] == SHAPE_STEPS * truth["backward_by_op"][f"{attention}_backward"]
    assert opc.ops["problem"].null_count() == opc.ops.height  # every op with a formula was counted


def test_mfu_divides_by_the_kernel_time_of_the_same_instances(rep, rows, trace_paths):
    times = postprocess.load(trace_paths["llama_train"], within="measured", launches="process")
    for stage in ("forward", "backward", "step"):
        shaped = times.instances.filter(pl.col("name") == stage).sort("start_ns").tail(SHAPE_STEPS)
        for base in ("kernel", "busy", "wall"):
            assert rows[stage][f"{base}_ns"] == shaped[f"{base}_ns"].sum()
        assert rows[stage]["mfu_kernel"] == pytest.approx(
            rows[stage]["flops"] / (shaped["kernel_ns"].sum() * rep.peak.tflops * 1e3)
        )


def test_coverage_and_what_the_formulas_leave_out(rep, rows):
    # matrix products are most of the work; elementwise, norm and loss kernels the rest
    assert 0.5 < rows["backward"]["flops_coverage"] < 1 and rows["optimizer"]["flops_coverage"] == 0
    optimizer = rep.uncounted_ops.filter(pl.col("stage") == "optimizer").row(0, named=True)
    assert optimizer["op"] == "aten::_fused_adamw_" and optimizer["kernel_share"] > 0.99


def test_the_range_around_plain_and_shaped_steps_is_left_out(rep, rows):
    assert "measured" not in rows
    assert any("left out 'measured'" in n for n in rep.notes)
    assert any("'forward' 2 of 6" in n for n in rep.notes)  # warm-up and 3 plain steps have no op ranges
