"""MFU arithmetic on traces with known times and FLOPs: every base, MBU, decode steps, model level, latency."""

from __future__ import annotations

import pytest
from report_traces import (
    ANALYSIS,
    PEAK_TFLOPS,
    write_json,
)

from stagemfu import report
from stagemfu.errors import FlopsMismatchError, StagemfuError
from stagemfu.postprocess import load


def rows(rep):
    return {r["stage"]: r for r in rep.stages.iter_rows(named=True)}


def test_mfu_on_each_base_is_flops_over_time_times_peak(toy, tmp_path):
    flops = write_json(tmp_path / "f.json", {"prefill": {"flops": 700_000, "bytes": 2_800_000}, "decode": 250_000})
    rep = report.report(toy, flops_file=flops, peak_tflops=PEAK_TFLOPS, peak_bandwidth_gbs=1000)
    prefill = rows(rep)["prefill"]
    # prefill: wall 2900, span 1600 (GPU 1000-2600), busy 1400, kernel 1400 ns.
    assert [prefill[f"{b}_ns"] for b in ("wall", "span", "busy", "kernel")] == [2900, 1600, 1400, 1400]
    assert prefill["mfu_wall"] == pytest.approx(700_000 / (2900 * 1000))
    assert prefill["mfu_span"] == pytest.approx(700_000 / (1600 * 1000))
    assert prefill["mfu_kernel"] == prefill["mfu_busy"] == pytest.approx(0.5)
    assert prefill["tflops_kernel"] == pytest.approx(0.5)
    assert prefill["idle_share"] == pytest.approx(1 - 1400 / 1600)
    assert prefill["mbu"] == pytest.approx(2_800_000 / 1400 / 1000)  # bytes/ns = GB/s
    decode = rows(rep)["decode"]
    assert (decode["instances"], decode["kernel_ns"], decode["wall_ns"]) == (2, 500, 4000)
    assert decode["mfu_kernel"] == pytest.approx(0.5)
    assert decode["mbu"] is None  # no bytes given


def test_real_trace_mfu_uses_the_h100_datasheet_peak(trace_paths, tmp_path):
    flops = write_json(tmp_path / "f.json", {"prefill": 5_000_000_000, "decode": {"flops": 700_000_000, "bytes": 7e7}})
    rep = report.report(trace_paths["tiny_vlm"], flops_file=flops)
    st = load(trace_paths["tiny_vlm"], within="measured")
    times = {r["name"]: r for r in st.ranges.iter_rows(named=True)}
    prefill, decode = rows(rep)["prefill"], rows(rep)["decode"]
    assert rep.times.within == "measured" and rep.peak.tflops == 989.4
    for base in ("wall", "span", "busy", "kernel"):
        assert prefill[f"{base}_ns"] == times["prefill"][f"{base}_ns"]
        assert prefill[f"mfu_{base}"] == pytest.approx(5e9 / (times["prefill"][f"{base}_ns"] * 1e-9 * 989.4e12))
    assert decode["mbu"] == pytest.approx(7e7 / (times["decode"]["kernel_ns"] * 1e-9 * 3350e9))
    assert "launch-bound" in decode["diagnosis"]


def test_analyzer_prefill_gets_vision_flops_when_vision_runs_inside_prefill(toy, analysis):
    rep = report.report(toy, flops_file=analysis, peak_tflops=PEAK_TFLOPS)
    r = rows(rep)
    assert r["prefill"]["flops"] == 900_000  # language model 700k + vision 200k
    assert r["prefill"]["flops_torch"] == 890_000
    assert r["vision"]["flops"] == 200_000 and r["vision"]["kernel_ns"] == 400
    assert any("prefill's FLOPs include vision's" in n for n in rep.notes)


def test_model_level_never_counts_vision_twice(toy, analysis):
    rep = report.report(toy, flops_file=analysis, peak_tflops=PEAK_TFLOPS)
    m = rep.model
    assert m["stages"] == ["prefill", "decode"]
    assert m["flops"] == 900_000 + 250_000  # vision once, inside prefill
    assert (m["kernel_ns"], m["wall_ns"]) == (1400 + 500, 2900 + 4000)
    assert m["mfu_kernel"] == pytest.approx(1_150_000 / (1900 * 1000))


def test_vision_outside_prefill_is_added_once(make_trace, tmp_path):
    # Same kernels, but "vision" sits beside prefill instead of inside it.
    trace = make_trace(
        tmp_path,
        calls=[{"start": 300, "end": 310, "correlationId": 1}, {"start": 1500, "end": 1510, "correlationId": 2}],
        kernels=[
            {"start": 1000, "end": 1400, "correlationId": 1},
            {"start": 1600, "end": 2600, "correlationId": 2},
        ],
        ranges=[{"start": 200, "end": 1000, "text": "vision"}, {"start": 1100, "end": 3000, "text": "prefill"}],
    )
    flops = write_json(tmp_path / "f.json", {"vision": 200_000, "prefill": 700_000, "decode": 1})
    doc = dict(ANALYSIS, stages={k: ANALYSIS["stages"][k] for k in ("vision", "prefill")})
    rep = report.report(trace, flops_file=write_json(tmp_path / "a.json", doc), peak_tflops=PEAK_TFLOPS)
    assert rows(rep)["prefill"]["flops"] == 700_000
    assert rep.model is None  # no decode
    assert rep.latency["ttft_wall_ns"] == 800 + 1900
    assert not any("'decode' has FLOPs" in n for n in (*rep.notes, *rep.warnings))
    rep = report.report(trace, flops_file=flops, peak_tflops=PEAK_TFLOPS)
    assert any("stage 'decode' has FLOPs but the trace has no NVTX range 'decode'" in n for n in rep.warnings)
    assert rep.decode_steps.is_empty() and "mfu_kernel" in rep.decode_steps.columns


def test_decode_steps_interpolate_between_first_and_last_step(toy, analysis):
    rep = report.report(toy, flops_file=analysis, peak_tflops=PEAK_TFLOPS, peak_bandwidth_gbs=1000)
    steps = rep.decode_steps
    assert steps["step"].to_list() == [1, 2]
    assert steps["flops"].to_list() == [100_000, 150_000]
    assert steps["kernel_ns"].to_list() == [200, 300]
    assert steps["mfu_kernel"].to_list() == pytest.approx([0.5, 0.5])
    assert steps["mbu"].to_list() == pytest.approx([390_000 / 200 / 1000, 410_000 / 300 / 1000])
    r = rows(rep)
    assert (r["decode_first"]["kernel_ns"], r["decode_last"]["kernel_ns"]) == (200, 300)
    assert r["decode_first"]["mfu_kernel"] == pytest.approx(0.5)


def test_latency_view_on_wall_and_gpu_time(toy, analysis):
    lat = report.report(toy, flops_file=analysis, peak_tflops=PEAK_TFLOPS).latency
    assert (lat["ttft_wall_ns"], lat["ttft_gpu_ns"]) == (2900, 1400)
    assert (lat["tpot_wall_p50_ns"], lat["tpot_gpu_p50_ns"]) == (2000, 250)
    assert lat["tpot_gpu_p90_ns"] == 290  # linear between 200 and 300
    assert lat["decode_tokens_per_s_wall"] == pytest.approx(2 / 4000e-9)
    assert lat["decode_tokens_per_s_gpu"] == pytest.approx(2 / 500e-9)


def test_several_generations_in_the_trace_scale_the_flops(trace_paths, tmp_path):
    # Without --within the fixture holds the warm-up and the measured generation: 2 prefills, 14 decode steps.
    flops = write_json(
        tmp_path / "f.json", {"prefill": {"flops": 1e9, "instances": 1}, "decode": {"flops": 7e8, "instances": 7}}
    )
    rep = report.report(trace_paths["tiny_vlm"], flops_file=flops, all_instances=True)
    r = rows(rep)
    assert (r["prefill"]["generations"], r["prefill"]["flops"]) == (2, 2_000_000_000)
    assert (r["decode"]["instances"], r["decode"]["flops"]) == (14, 1_400_000_000)
    assert rep.decode_steps["generation"].to_list() == [1] * 7 + [2] * 7
    assert rep.latency["generations"] == 2
    assert any("2 generations" in n for n in rep.notes)


def test_instance_count_that_does_not_match_the_flops_stops_the_report(trace_paths, tmp_path):
    # 7 decode ranges against FLOPs for 31 per generation: every MFU of decode would be 4.4x off.
    flops = write_json(tmp_path / "f.json", {"decode": {"flops": 7e8, "instances": 31}})
    with pytest.raises(FlopsMismatchError, match="7 instances but the FLOPs .* are for 31 per generation") as err:
        report.report(trace_paths["tiny_vlm"], flops_file=flops)
    assert "--new-tokens 8" in str(err.value) and "\n" not in str(err.value)


def test_missing_stages_are_warnings_and_ranges_without_flops_notes(toy, tmp_path):
    flops = write_json(tmp_path / "f.json", {"prefill": 1, "lm_head": 5})
    rep = report.report(toy, flops_file=flops, peak_tflops=PEAK_TFLOPS)
    assert rep.stages["stage"].to_list() == ["prefill"]
    assert any("'lm_head' has FLOPs but the trace has no NVTX range" in n for n in rep.warnings)
    assert any("range 'decode' is in the trace but has no FLOPs" in n for n in rep.notes)
    assert rep.model is None


def test_no_stage_in_common_is_an_error(toy, tmp_path):
    flops = write_json(tmp_path / "f.json", {"lm_head": 5})
    with pytest.raises(StagemfuError, match="no stage of the FLOPs"):
        report.report(toy, flops_file=flops, peak_tflops=PEAK_TFLOPS)


def test_stage_without_gpu_work_is_diagnosed(make_trace, tmp_path):
    trace = make_trace(
        tmp_path,
        calls=[{"start": 2, "end": 3, "correlationId": 1}],
        kernels=[{"start": 10, "end": 20, "correlationId": 1}],
        ranges=[{"start": 0, "end": 5, "text": "prefill"}, {"start": 6, "end": 9, "text": "decode"}],
    )
    rep = report.report(trace, flops_file=write_json(tmp_path / "f.json", {"decode": 5}), peak_tflops=1)
    assert rows(rep)["decode"]["diagnosis"].startswith("no GPU work")
    assert rows(rep)["decode"]["mfu_kernel"] is None


def test_within_defaults_to_measured_and_can_be_turned_off(trace_paths, tmp_path):
    flops = write_json(tmp_path / "f.json", {"prefill": 1e9})
    assert report.report(trace_paths["tiny_vlm"], flops_file=flops).stages["instances"].to_list() == [1]
    everything = report.report(trace_paths["tiny_vlm"], flops_file=flops, all_instances=True)
    assert everything.times.within is None and everything.stages["instances"].to_list() == [2]
