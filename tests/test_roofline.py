"""The roofline and the KV cache: hand-computed roofline times, KV bytes per position of published
configs, the report's roofline columns, and sweeps that move the way physics says they must."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from report_traces import PEAK_TFLOPS, write_json
from tiny_models import TINY_LMS, tiny_spec

from stagemfu import report
from stagemfu.analyzer import analyze
from stagemfu.analyzer.memory import kv_bytes_per_position
from stagemfu.analyzer.sweep import sweep
from stagemfu.models import Inputs, load_model_spec
from stagemfu.report.peaks import Peak, gpu_peak
from stagemfu.report.roofline import ridge_intensity, with_roofline
from stagemfu.report.what_if import compute_bound_batch, what_if

CONFIGS = ROOT / "tests" / "fixtures" / "configs"
# 1,000 TFLOP/s and 2,000 GB/s: 1e6 FLOPs and 2,000 bytes per ns; the ridge is at 500 FLOP/B.
PEAK = Peak("test GPU", None, "bf16", 1000.0, 2000.0, "override", "test")


def by_stage(analysis) -> dict[str, dict]:
    return analysis.stages.rows_by_key("stage", named=True, unique=True)


def test_roofline_time_is_the_larger_of_compute_and_memory_time():
    frame = pl.DataFrame(
        {
            "stage": ["gemm", "gemv", "unknown bytes", "nothing moved"],
            "flops": [2_000_000_000_000, 1_000_000_000, 5, 3_000_000],
            "bytes": [1_000_000_000, 1_000_000_000, None, 0],
        }
    )
    out = with_roofline(frame, PEAK).rows_by_key("stage", named=True, unique=True)
    # gemm: 2e12 / 1e6 = 2,000,000 ns of compute against 1e9 / 2,000 = 500,000 ns of memory.
    assert (out["gemm"]["roofline_ns"], out["gemm"]["bound"], out["gemm"]["intensity"]) == (2_000_000, "compute", 2000)
    # gemv: 1,000 ns of compute against 500,000 ns of memory.
    assert (out["gemv"]["roofline_ns"], out["gemv"]["bound"], out["gemv"]["intensity"]) == (500_000, "memory", 1.0)
    assert out["unknown bytes"]["roofline_ns"] is None and out["unknown bytes"]["bound"] is None
    assert out["nothing moved"]["intensity"] is None  # no bytes: no finite intensity, the compute roof alone
    assert (out["nothing moved"]["roofline_ns"], out["nothing moved"]["bound"]) == (3, "compute")
    assert ridge_intensity(PEAK) == 500


def test_without_a_bandwidth_there_is_an_intensity_but_no_roofline_time():
    frame = pl.DataFrame({"flops": [10], "bytes": [5]})
    for peak in (None, Peak(None, None, "bf16", 1.0, None, "override", "test")):
        row = with_roofline(frame, peak).row(0, named=True)
        assert (row["intensity"], row["roofline_ns"], row["bound"]) == (2.0, None, None)


@pytest.mark.parametrize(
    ("config", "dtype", "per_position"),
    [
        ("llama-3.2-1b", "bf16", 2 * 16 * 8 * 64 * 2),  # 2 x layers x kv_heads x head_dim x bytes
        ("qwen3-30b-a3b", "bf16", 2 * 48 * 4 * 128 * 2),
        ("qwen3-30b-a3b", "fp8", 2 * 48 * 4 * 128 * 1),
        ("deepseek-v2-lite", "bf16", 27 * (512 + 64) * 2),  # layers x (kv_lora_rank + qk_rope_head_dim) x bytes
        ("deepseek-v2-lite", "fp32", 27 * (512 + 64) * 4),
    ],
)
def test_kv_cache_bytes_per_position_of_published_configs(config, dtype, per_position):
    assert kv_bytes_per_position(load_model_spec(str(CONFIGS / config)).dims.lm, dtype) == per_position


def test_kv_cache_of_deepseek_v3_and_the_ocr_presets_follows_their_attention(tmp_path):
    v3 = tiny_spec(tmp_path, "deepseek_v3")  # MLA: 2 layers x (16 + 8)
    assert kv_bytes_per_position(v3.dims.lm, "bf16") == 2 * (16 + 8) * 2
    ocr2 = load_model_spec("deepseek-ocr2")  # 12 layers of multi-head attention, 10 heads of 128
    assert kv_bytes_per_position(ocr2.dims.lm, "bf16") == 2 * 12 * 10 * 128 * 2


def test_kv_bytes_read_written_and_held_per_stage():
    spec = load_model_spec(str(CONFIGS / "llama-3.2-1b"))
    per = 2 * 16 * 8 * 64 * 2
    s = by_stage(analyze(spec, Inputs(text_tokens=10, new_tokens=4, batch=3), counters=("analytic",)))
    assert (s["prefill"]["kv_read_bytes"], s["prefill"]["kv_write_bytes"], s["prefill"]["kv_bytes"]) == (
        3 * 10 * per, 3 * 10 * per, 3 * 10 * per
    )  # fmt: skip
    # steps 1..3 attend over 11, 12, 13 positions and each adds one
    assert (s["decode"]["kv_read_bytes"], s["decode"]["kv_write_bytes"], s["decode"]["kv_bytes"]) == (
        3 * (11 + 12 + 13) * per, 3 * 3 * per, 3 * 13 * per
    )  # fmt: skip
    assert (s["decode_first"]["kv_bytes"], s["decode_last"]["kv_bytes"]) == (3 * 11 * per, 3 * 13 * per)
    for stage in ("prefill", "decode"):  # the KV traffic is part of the stage's bytes
        assert s[stage]["bytes"] > s[stage]["kv_read_bytes"] + s[stage]["kv_write_bytes"]


def test_vision_stages_hold_no_kv_cache():
    s = by_stage(analyze(load_model_spec("deepseek-ocr2"), Inputs(), counters=("analytic",)))
    assert all(s[v]["kv_bytes"] == s[v]["kv_read_bytes"] == 0 for v in ("vision", "sam", "encoder", "projector"))


def test_report_stage_rows_carry_the_roofline_beside_kernel_time(toy, tmp_path):
    # 1 TFLOP/s and 1,000 GB/s: 1,000 FLOPs and 1,000 bytes per ns.
    flops = write_json(tmp_path / "f.json", {"prefill": {"flops": 700_000, "bytes": 350_000},
                                             "decode": {"flops": 250_000, "bytes": 400_000}})  # fmt: skip
    rep = report.report(toy, flops_file=flops, peak_tflops=PEAK_TFLOPS, peak_bandwidth_gbs=1000)
    r = rep.stages.rows_by_key("stage", named=True, unique=True)
    # prefill: 700 ns of compute, 350 of memory, against 1,400 ns of kernels
    assert (r["prefill"]["roofline_ns"], r["prefill"]["roofline_bound"]) == (700, "compute")
    assert r["prefill"]["roofline_efficiency"] == pytest.approx(0.5) and r["prefill"]["intensity"] == 2.0
    # decode (2 steps): 250 ns of compute, 400 of memory, against 500 ns of kernels
    assert (r["decode"]["roofline_ns"], r["decode"]["roofline_bound"]) == (400, "memory")
    assert r["decode"]["roofline_efficiency"] == pytest.approx(0.8)
    assert any(n.startswith("roofline: a stage takes at least max(FLOPs / peak") for n in rep.notes)
    steps = rep.decode_steps.select("roofline_ns", "roofline_bound", "roofline_efficiency").rows()
    assert steps == [(200, "memory", pytest.approx(1.0)), (200, "memory", pytest.approx(200 / 300))]


def test_report_json_stage_rows_add_roofline_ns_and_efficiency(toy, tmp_path):
    from click.testing import CliRunner

    from stagemfu.cli import cli

    flops = write_json(tmp_path / "f.json", {"prefill": {"flops": 700_000, "bytes": 350_000}, "decode": 250_000})
    args = ["report", str(toy), "--flops", str(flops), "--peak-tflops", "1", "--peak-bandwidth", "1000"]
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    stages = {s["stage"]: s for s in json.loads(result.stdout)["stages"]}
    assert (stages["prefill"]["roofline_ns"], stages["prefill"]["roofline_efficiency"]) == (700, 0.5)
    assert stages["decode"]["roofline_ns"] is None and stages["decode"]["roofline_efficiency"] is None  # no bytes


def test_a_stage_faster_than_its_roofline_is_noted(toy, tmp_path):
    flops = write_json(tmp_path / "f.json", {"prefill": {"flops": 700_000, "bytes": 7_000_000}})
    rep = report.report(toy, flops_file=flops, peak_tflops=PEAK_TFLOPS, peak_bandwidth_gbs=1000)
    assert rep.stages["roofline_efficiency"][0] == pytest.approx(5.0)
    assert any("prefill" in n and "faster than its roofline" in n for n in rep.notes)


def test_decode_turns_compute_bound_at_the_batch_where_its_intensity_crosses_the_ridge():
    spec, inputs = load_model_spec(str(CONFIGS / "llama-3.2-1b")), Inputs(text_tokens=64, new_tokens=32)
    h100 = gpu_peak("H100")
    batch, _ = compute_bound_batch(spec, inputs, h100)

    def intensity(b: int) -> float:
        row = analyze(spec, Inputs(text_tokens=64, new_tokens=32, batch=b), counters=("analytic",)).stage("decode")
        return row["flops"] / row["bytes"]

    assert intensity(batch - 1) < ridge_intensity(h100) <= intensity(batch)
    assert batch == 464
    # at long contexts the KV cache each sequence reads caps decode's intensity below the ridge
    never, reached = compute_bound_batch(spec, Inputs(text_tokens=4096, new_tokens=32), h100)
    assert never is None and 20 < reached < ridge_intensity(h100)
    assert compute_bound_batch(spec, Inputs(new_tokens=1), h100) == (None, None)  # no decode steps


def test_what_if_generation_bounds_add_up_from_the_stage_rooflines():
    w = what_if(load_model_spec("deepseek-ocr2"), Inputs(new_tokens=5), {"batch": (1, 4)}, peak=gpu_peak("H200"))
    for point in (1, 4):
        s = w.stages.filter(pl.col("batch") == point).rows_by_key("stage", named=True, unique=True)
        g = w.generation.filter(pl.col("batch") == point).row(0, named=True)
        assert g["ttft_ns"] == s["vision"]["roofline_ns"] + s["prefill"]["roofline_ns"]
        assert g["decode_ns"] == s["decode"]["roofline_ns"] and g["tpot_ns"] == round(g["decode_ns"] / 4)
        assert g["generation_ns"] == g["ttft_ns"] + g["decode_ns"]
        assert g["decode_tokens_per_s"] == pytest.approx(point * 4 * 1e9 / g["decode_ns"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    family=st.sampled_from(sorted(TINY_LMS)),
    tokens=st.lists(st.integers(1, 3000), min_size=2, max_size=4, unique=True),
    batches=st.lists(st.integers(1, 4096), min_size=2, max_size=4, unique=True),
)
def test_sweeps_move_as_physics_says(tmp_path_factory, family, tokens, batches):
    """FLOPs grow with the prompt and the tokens generated; decode's intensity grows with the batch
    (its FLOPs grow in proportion while the weights are read once for every sequence)."""
    spec = tiny_spec(tmp_path_factory.mktemp(family), family)
    tokens, batches = sorted(tokens), sorted(batches)
    by_text = sweep(spec, Inputs(new_tokens=3), {"text_tokens": tokens})
    for stage in ("prefill", "decode", "decode_last"):
        flops = by_text.stages.filter(pl.col("stage") == stage)["flops"].to_list()
        assert flops == sorted(flops) and len(set(flops)) == len(flops), (stage, flops)
    by_new = sweep(spec, Inputs(text_tokens=7), {"new_tokens": [t + 1 for t in tokens]})
    decode = by_new.stages.filter(pl.col("stage") == "decode")["flops"].to_list()
    assert decode == sorted(decode) and len(set(decode)) == len(decode)
    by_batch = sweep(spec, Inputs(text_tokens=7, new_tokens=3), {"batch": batches})
    for stage in ("decode", "decode_first"):
        rows = by_batch.stages.filter(pl.col("stage") == stage)
        intensity = (rows["flops"] / rows["bytes"]).to_list()
        assert all(a < b for a, b in zip(intensity, intensity[1:])), (stage, intensity)
