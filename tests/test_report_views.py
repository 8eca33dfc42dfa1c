"""What people read: PyTorch emit_nvtx ranges grouped by operator, tables sorted by time and cut to
the top rows, patterns for range names, tables fitted to the terminal's width, honest diagnoses of
asynchronous ranges, FLOPs that do not fit the trace, warnings first and notes once."""

from __future__ import annotations

import io
import json
import re

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import fixture_trace, launch
from report_traces import ANALYSIS, generation_trace, write_json
from rich.console import Console

from stagemfu import postprocess, report
from stagemfu.cli import cli
from stagemfu.errors import FlopsMismatchError
from stagemfu.report.op_ranges import group_op_ranges
from stagemfu.report.render import compare_view, postprocess_view, report_view
from stagemfu.report.render.html import html_page
from stagemfu.report.render.terminal import short_names
from stagemfu.report.render.view import TableView

# (operator, kernel, kernel ns) of one emit_nvtx training-step layer, as PyTorch names the ranges
OPS = [
    ("aten::linear", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", 900),
    ("aten::mul", "void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<...>>", 120),
    ("aten::add", "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<...>>", 100),
    ("aten::_softmax", "void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, float>", 300),
    ("aten::copy_", "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>", 80),
    ("MmBackward0", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize128x256x64_warpgroupsize2x1x1", 1500),
]
CALLS = 40  # calls of each operator


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def rendered(renderable, width):
    console = Console(width=width, file=io.StringIO(), record=True, highlight=False)
    console.print(renderable)
    return console.export_text()


@pytest.fixture
def emit_nvtx_trace(make_trace, tmp_path):
    """A 'step' range holding CALLS calls of each operator, each its own range named the emit_nvtx way."""
    ranges, calls, kernels, t, corr = [{"start": 0, "end": 10**9, "text": "step"}], [], [], 10, 0
    for i in range(CALLS):
        for j, (op, kernel, ns) in enumerate(OPS):
            corr += 1
            seq = 1000 + i * len(OPS) + j
            name = f"{op}, seq = {seq}, op_id = {corr + 5000}, sizes = [[4, 1024, 2048], [2048]], input_op_ids = []"
            ranges.append({"start": t, "end": t + 50, "text": name})
            call, k = launch(corr, (t + 10, t + 20), (t + 100, t + 100 + ns), name=kernel)
            calls.append(call)
            kernels.append(k)
            t += 100 + ns + 10
    return make_trace(tmp_path, ranges=ranges, calls=calls, kernels=kernels, name="emit_nvtx.sqlite")


# ------------------------------------------------------------------------------------------------
# emit_nvtx: grouped by operator, sorted by time, top rows


def test_emit_nvtx_ranges_are_grouped_by_operator_in_the_tables(emit_nvtx_trace):
    st = postprocess.load(emit_nvtx_trace)
    assert st.ranges.height == 1 + CALLS * len(OPS)  # the data keeps every call
    grouped = group_op_ranges(st)
    rows = {r["name"]: r for r in grouped.ranges.iter_rows(named=True)}
    assert set(rows) == {"step", *(op for op, _, _ in OPS)}
    assert rows["MmBackward0"]["instances"] == CALLS and rows["MmBackward0"]["kernel_ns"] == CALLS * 1500
    assert rows["aten::mul"]["busy_ns"] == CALLS * 120 and rows["aten::mul"]["idle_share"] == 0.0
    kernels = grouped.kernels.filter(pl.col("name") == "aten::linear")
    assert kernels["count"].to_list() == [CALLS] and kernels["busy_share"].to_list() == [1.0]
    assert set(grouped.paths["path"]) == {"step", *(f"step/{op}" for op, _, _ in OPS)}
    stats = grouped.instance_stats.filter((pl.col("name") == "aten::add") & (pl.col("metric") == "busy_ns"))
    assert stats.select("count", "p50_ns").row(0) == (CALLS, 100)


def test_postprocess_terminal_is_short_sorted_by_time_and_says_what_it_left_out(emit_nvtx_trace):
    result = invoke("postprocess", emit_nvtx_trace, "--top", "3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    tables = out.split("largest first")[1]  # the summary line quotes one emit_nvtx name as an example
    assert "seq =" not in tables and "op_id" not in tables
    stage_table = out.split("Stages")[1].split("Paths")[0]
    shown = [line.split("│")[1].strip() for line in stage_table.splitlines() if line.startswith("│")]
    assert shown == ["step", "MmBackward0", "aten::linear"]  # largest busy time first
    assert "4 more rows left out (--all shows every row" in stage_table
    assert len(out.splitlines()) < 120
    full = invoke("postprocess", emit_nvtx_trace, "--full-names", "--all").stdout
    full_stages = full.split("Stages")[1].split("Paths")[0]
    assert full_stages.count("│ aten::mul, seq = ") == CALLS  # one row per call, every one shown


def test_data_outputs_keep_every_full_name(emit_nvtx_trace):
    doc = json.loads(invoke("postprocess", emit_nvtx_trace, "--format", "json").stdout)
    assert len(doc["ranges"]) == 1 + CALLS * len(OPS)
    assert any(r["name"].startswith("aten::mul, seq = ") for r in doc["ranges"])
    csv = pl.read_csv(io.StringIO(invoke("postprocess", emit_nvtx_trace, "--format", "csv").stdout))
    assert csv.height == 1 + CALLS * len(OPS)


def test_markdown_is_grouped_and_cut_too(emit_nvtx_trace):
    md = invoke("postprocess", emit_nvtx_trace, "--format", "md", "--top", "2").stdout
    assert "seq =" not in md.split("largest first")[1] and "more rows left out" in md


def test_recorded_emit_nvtx_training_step_prints_a_readable_page():
    """The H200 training step under emit_nvtx (tests/fixtures): 1,279 range names in nsys's table."""
    st = postprocess.load(fixture_trace("llama_train"))
    assert st.ranges.height > 1000
    text = rendered(postprocess_view.terminal_view(st), 160)
    assert len(text.splitlines()) < 400 and "op_id" not in text.split("largest first")[1]
    grouped = group_op_ranges(st)
    assert grouped.ranges.height < 150
    for column in ("instances", "wall_ns", "busy_ns", "kernel_ns", "gpu_ops"):  # grouping only regroups
        assert grouped.ranges[column].sum() == st.ranges[column].sum()


# ------------------------------------------------------------------------------------------------
# Patterns


def test_range_and_within_take_patterns(emit_nvtx_trace):
    doc = json.loads(invoke("postprocess", emit_nvtx_trace, "--range", "aten::[lm]*", "--format", "json").stdout)
    assert {r["name"].split(",")[0] for r in doc["ranges"]} == {"aten::linear", "aten::mul"}
    within = json.loads(invoke("postprocess", emit_nvtx_trace, "--within", "st?p", "--format", "json").stdout)
    assert len(within["ranges"]) == 1 + CALLS * len(OPS)
    result = invoke("postprocess", emit_nvtx_trace, "--range", "nccl*")
    assert result.exit_code == 2 and "no NVTX range named 'nccl*'" in result.stderr


def test_flops_keys_take_patterns_and_sum_the_ranges_they_match(emit_nvtx_trace, tmp_path):
    flops = write_json(tmp_path / "f.json", {"aten::linear*": CALLS * 2 * 4096 * 2048 * 2048, "*Backward0*": 10})
    rep = report.report(emit_nvtx_trace, flops_file=flops, peak_tflops=1)
    rows = {r["stage"]: r for r in rep.stages.iter_rows(named=True)}
    assert rows["aten::linear*"]["instances"] == CALLS and rows["aten::linear*"]["kernel_ns"] == CALLS * 900
    assert rows["*Backward0*"]["kernel_ns"] == CALLS * 1500
    assert rep.kernels.filter(pl.col("name").str.starts_with("MmBackward0")).height > 0  # kernels follow
    by_op = report.report(emit_nvtx_trace, flops_file=write_json(tmp_path / "o.json", {"aten::mul": 5}), peak_tflops=1)
    mul = by_op.stages.row(0, named=True)  # an operator's name stands for all its calls
    assert (mul["stage"], mul["instances"], mul["kernel_ns"]) == ("aten::mul", CALLS, CALLS * 120)
    assert by_op.warnings == ()
    nested = report.report(emit_nvtx_trace, flops_file=write_json(tmp_path / "g.json", {"*": 1}), peak_tflops=1)
    assert any("'*' matches ranges nested in one another" in n for n in nested.notes)


# ------------------------------------------------------------------------------------------------
# Terminal width


@pytest.fixture(scope="module")
def demo_report():
    from stagemfu.data import default_trace

    return report.report(default_trace(), counters=("analytic",))


@pytest.mark.parametrize("width", [80, 100, 120])
def test_report_fits_the_terminal_without_breaking_headers(demo_report, width):
    text = rendered(report_view.terminal_view(demo_report), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    table = text.split("MFU per stage")[1].split("Whole generation")[0]
    header = next(line for line in table.splitlines() if "stage" in line)
    assert "MFU kernel %" in header and "MFU wall %" in header  # kernel and wall MFU first, never wrapped
    assert "kerne " not in text and "│ l %" not in text
    assert "columns left out to fit" in table


def test_embedded_report_shows_the_roofline_table_beside_kernel_and_wall_time(demo_report):
    text = rendered(report_view.terminal_view(demo_report), 132)
    table = text.split("Roofline per stage")[1].split("Whole generation")[0]
    header = next(line for line in table.splitlines() if "stage" in line)
    for column in ("bound", "FLOP/B", "roofline ms", "kernel ms", "wall ms", "roofline/kernel %"):
        assert column in header, column
    decode = next(line for line in table.splitlines() if "│ decode " in line)
    assert "memory" in decode and "2.440" in decode and "15.499" in decode and "15.7" in decode
    sam = next(line for line in table.splitlines() if "│ sam " in line)
    assert "compute" in sam
    html = html_page(demo_report)
    assert 'id="chart-roofline"' in html and '"roofline": {"tflops": 989.4' in html


def test_compare_with_its_13_columns_fits_100_characters(demo_report):
    from stagemfu.report.compare import compare_reports, side_from_report

    cmp = compare_reports(side_from_report(demo_report, "A"), side_from_report(demo_report, "B"))
    text = rendered(compare_view.terminal_view(cmp), 100)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "kernel ms A" in text and "kernel change %" in text and "wall ms A" in text


def test_columns_and_base_pick_what_is_shown(demo_report):
    picked = rendered(report_view.terminal_view(demo_report, view=TableView(columns=("gflop", "mfu_wall"))), 200)
    stage_table = picked.split("MFU per stage")[1].split("Whole generation")[0]
    header = next(line for line in stage_table.splitlines() if "stage" in line)
    assert [c.strip() for c in header.strip("┃ \n").split("┃")] == ["stage", "GFLOP", "MFU wall %"]
    based = rendered(report_view.terminal_view(demo_report, view=TableView(bases=("kernel",))), 200)
    stage_table = based.split("MFU per stage")[1].split("Whole generation")[0]
    assert "MFU kernel %" in stage_table and "wall ms" not in stage_table and "MFU busy %" not in stage_table
    result = invoke("report", "--counters", "analytic", "--base", "kernel,wall", "--columns", "mfu")
    assert result.exit_code == 0 and "MFU busy %" not in result.stdout and "MFU wall %" in result.stdout
    assert invoke("report", "--base", "gpu").exit_code == 2


def test_kernel_names_are_cut_in_the_middle_and_stay_distinguishable():
    names = [
        "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_128x128_64x3_nn_align8>(T1::Params)",
        "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_256x128_64x3_nn_align8>(T1::Params)",
        "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_128x128_64x3_tn_align8>(T1::Params)",
        "short_kernel",
    ]
    short = short_names(names, 40)
    assert all(len(s) <= 40 for s in short) and len(set(short)) == len(names)
    assert short[0].startswith("void cutlass:") and short[0].endswith("_128x128_64x3_nn_align8")
    assert short[3] == "short_kernel"
    twins = ["a" * 30 + "_x_" + "b" * 30, "a" * 30 + "_y_" + "b" * 30]
    assert len(set(short_names(twins, 40))) == 2  # still different when the tail alone is the same


# ------------------------------------------------------------------------------------------------
# Diagnoses


@pytest.fixture
def async_trace(make_trace, tmp_path):
    """ncclGroupEnd-like ranges: 10 µs on the CPU, their GPU work runs 100 µs after the range closed."""
    pairs = [launch(i + 1, (i * 1000 + 2, i * 1000 + 3), (i * 1000 + 100, i * 1000 + 200)) for i in range(3)]
    return make_trace(
        tmp_path,
        calls=[c for c, _ in pairs],
        kernels=[k for _, k in pairs],
        ranges=[{"start": i * 1000, "end": i * 1000 + 10, "text": "ncclGroupEnd"} for i in range(3)],
    )


def test_asynchronous_range_is_diagnosed_on_its_span_and_no_share_exceeds_100(async_trace, tmp_path):
    rep = report.report(async_trace, flops_file=write_json(tmp_path / "f.json", {"ncclGroupEnd": 3000}), peak_tflops=1)
    row = rep.stages.row(0, named=True)
    assert row["asynchronous"] and row["busy_share"] == 10.0  # busy/wall: the figure that read "1007 %"
    diagnosis = row["diagnosis"]
    assert "asynchronous: its GPU work ran after its CPU range closed" in diagnosis
    assert "busy 100 % of the stage's GPU span" in diagnosis
    assert all(int(p) <= 100 for p in re.findall(r"(\d+) %", diagnosis)), diagnosis


def test_diagnosis_and_idle_column_use_one_definition(demo_report):
    text = rendered(report_view.terminal_view(demo_report), 200)
    assert "idle % of span" in text
    for row in demo_report.stages.iter_rows(named=True):
        if row["diagnosis"].startswith("launch-bound"):
            idle = round(row["idle_share"] * 100)
            assert f"GPU idle {idle} % of the stage's GPU span" in row["diagnosis"]


def test_impossible_mfu_is_a_factor_not_a_share(toy, tmp_path):
    rep = report.report(toy, flops_file=write_json(tmp_path / "f.json", {"decode": 10**9}), peak_tflops=1)
    diagnosis = rep.stages.row(0, named=True)["diagnosis"]
    verdict = diagnosis.split(";")[0]
    assert verdict.startswith("impossible: the FLOPs need 2000.0× the GPU's peak") and "%" not in verdict


# ------------------------------------------------------------------------------------------------
# FLOPs that do not fit the trace; warnings first, notes once


def test_flops_for_more_tokens_than_the_trace_ran_exit_2_naming_the_fix(toy, tmp_path):
    flops = write_json(tmp_path / "a.json", ANALYSIS | {"inputs": ANALYSIS["inputs"] | {"new_tokens": 32}})
    with pytest.raises(FlopsMismatchError):
        report.report(toy, flops_file=flops)
    result = invoke("report", toy, "--flops", flops)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "'decode': the trace has 2 instances but the FLOPs" in result.stderr and "--new-tokens 3" in result.stderr


def test_embedded_trace_against_the_wrong_new_tokens_is_refused():
    result = invoke("report", "--model", "deepseek-ocr2", "--new-tokens", "32", "--counters", "analytic")
    assert result.exit_code == 2 and "7 instances" in result.stderr and "--new-tokens 8" in result.stderr


def test_warnings_come_first_and_notes_once_at_the_end(toy, tmp_path, analysis):
    doc = json.loads(analysis.read_text())
    doc["stages"]["lm_head"] = {"flops": 5}
    doc["notes"] = ["a convention", "a convention"]
    flops = write_json(tmp_path / "w.json", doc)
    out = invoke("report", toy, "--flops", flops).stdout
    lines = out.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning: stage 'lm_head' has FLOPs"))
    first_table = next(i for i, line in enumerate(lines) if line.startswith("MFU per stage"))
    assert warning < first_table
    assert out.count("note: a convention") == 1 and lines[-1].startswith("note: ")
    doc = json.loads(invoke("report", toy, "--flops", flops, "--format", "json").stdout)
    assert any("lm_head" in w for w in doc["warnings"])
    md = invoke("report", toy, "--flops", flops, "--format", "md").stdout
    assert md.index("> **Warning:**") < md.index("## MFU per stage")


def test_mismatch_between_generations_of_stages_is_a_warning(make_trace, tmp_path):
    trace = generation_trace(make_trace, tmp_path)
    flops = write_json(
        tmp_path / "f.json", {"prefill": {"flops": 100, "instances": 1}, "decode": {"flops": 5, "instances": 1}}
    )
    rep = report.report(trace, flops_file=flops, peak_tflops=1)
    assert any("different numbers of generations (prefill 1, decode 2)" in w for w in rep.warnings)


def test_several_traces_list_the_largest_busy_time_first(make_trace, tmp_path):
    traces = []
    for rank in range(2):
        small = launch(1, (10, 20), (100, 110), name="k_small")
        big = launch(2, (60, 70), (200, 700), name="k_big")
        traces.append(
            make_trace(
                tmp_path,
                ranges=[{"start": 0, "end": 50, "text": "small"}, {"start": 55, "end": 90, "text": "big"}],
                calls=[small[0], big[0]],
                kernels=[small[1], big[1]],
                name=f"rank{rank}.sqlite",
            )
        )
    out = invoke("postprocess", *traces, "--jobs", "1").stdout
    for title in ("Combined over traces", "Per trace"):
        table = out.split(title)[1]
        assert table.index("│ big") < table.index("│ small")
