"""``stagemfu report`` on the command line: every format, --html beside the table, env override, errors."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from report_traces import (
    generation_trace,
    write_json,
)

from stagemfu.cli import cli


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


def test_table_shows_kernel_and_wall_mfu_side_by_side(toy, analysis):
    result = invoke("report", toy, "--flops", analysis)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "MFU kernel %" in line)
    assert header.index("MFU kernel %") < header.index("MFU wall %")
    for words in ("989.4 TFLOP/s", "prefill + decode", "TTFT", "TPOT p90", "Diagnosis", "prefill's FLOPs include"):
        assert words in result.stdout


def test_json_is_the_report_schema(toy, analysis):
    doc = json.loads(invoke("report", toy, "--flops", analysis, "--format", "json").stdout)
    assert doc["schema"] == "stagemfu.report/1"
    assert doc["peak"]["source"] == "datasheet"
    assert {"gpu", "dtype", "tflops", "source"} <= set(doc["peak"])
    stage = doc["stages"][0]
    for key in ("stage", "flops", "wall_ns", "span_ns", "busy_ns", "kernel_ns", "mfu_wall", "mfu_span", "mfu_busy"):
        assert key in stage
    assert {"mfu_kernel", "mbu", "idle_share", "diagnosis"} <= set(stage)
    assert doc["model"]["flops"] == 1_150_000
    assert isinstance(doc["stages"][0]["flops"], int)
    assert doc["decode_steps"][1]["flops"] == 150_000


@pytest.mark.parametrize("table", ["stages", "decode_steps", "timeline", "kernels", "categories"])
def test_csv_writes_the_chosen_table(toy, analysis, table, tmp_path):
    out = tmp_path / "t.csv"
    assert invoke("report", toy, "--flops", analysis, "--format", "csv", "--table", table, "-o", out).exit_code == 0
    frame = pl.read_csv(out)
    assert frame.height > 0
    if table == "stages":
        assert frame["stage"].to_list()[:3] == ["vision", "prefill", "decode"]


def test_markdown_has_every_section(toy, analysis):
    md = invoke("report", toy, "--flops", analysis, "--format", "md").stdout
    for title in ("## MFU per stage", "## Whole generation", "## Latency", "## Decode steps", "## FLOP counters"):
        assert title in md
    assert "| prefill |" in md


def test_html_file_is_written_while_the_table_prints(toy, analysis, tmp_path):
    page = tmp_path / "report.html"
    result = invoke("report", toy, "--flops", analysis, "--html", page)
    assert "MFU per stage" in result.stdout
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and 'id="report-data"' in text
    assert "http://" not in text.split("<script")[0] and "<link" not in text  # nothing fetched


def test_env_peak_override(toy, analysis):
    doc = json.loads(
        invoke("report", toy, "--flops", analysis, "--format", "json", env={"STAGEMFU_PEAK_TFLOPS": "1"}).stdout
    )
    assert (doc["peak"]["tflops"], doc["peak"]["source"]) == (1.0, "override")
    assert doc["model"]["mfu_kernel"] == pytest.approx(1_150_000 / 1900 / 1000)


def test_no_flops_source_is_one_line_error(toy):
    one_line_error(invoke("report", toy), "--flops FILE", "--model")


def test_unknown_gpu_is_one_line_error(make_trace, tmp_path, analysis):
    trace = generation_trace(
        make_trace, tmp_path, gpus=[{"id": 0, "name": "Mystery GPU", "smCount": 1, "clockRate": 1}]
    )
    one_line_error(invoke("report", trace, "--flops", analysis), "Mystery GPU", "--peak-tflops")
    assert invoke("report", trace, "--flops", analysis, "--gpu", "NVIDIA H200").exit_code == 0


def test_bad_flops_file_is_one_line_error(toy, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"prefill": -3}')
    one_line_error(invoke("report", toy, "--flops", bad), str(bad), "non-negative")


def test_trace_recorded_by_stagemfu_run_needs_no_flops_flags(make_trace, tmp_path):
    # `stagemfu run` leaves shapes.json (model, inputs) and run.json (command, times) beside the trace.
    trace = generation_trace(make_trace, tmp_path)
    inputs = {"mode": "base", "text_tokens": 8, "new_tokens": 3, "batch": 1, "dtype": "bf16", "image_size": None}
    write_json(tmp_path / "shapes.json", {"schema": "stagemfu.shapes/1", "model": "deepseek-ocr2", "inputs": inputs})
    write_json(tmp_path / "run.json", {"schema": "stagemfu.run/1", "command": ["python", "x.py"], "exit_status": 0})
    result = invoke("report", trace, "--counters", "analytic", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["flops_source"]["model"] == "deepseek-ocr2"
    assert doc["flops_source"]["inputs"]["new_tokens"] == 3 and doc["flops_source"]["inputs"]["text_tokens"] == 8
    assert doc["run"]["command"] == ["python", "x.py"] and doc["run"]["model"] == "deepseek-ocr2"
    assert {"prefill", "decode", "vision"} <= {s["stage"] for s in doc["stages"]}
    decode = next(s for s in doc["stages"] if s["stage"] == "decode")
    assert decode["generations"] == 1  # 2 decode ranges = new_tokens - 1


def test_broken_run_file_is_one_line_error(toy, tmp_path):
    (tmp_path / "shapes.json").write_text("{not json")
    one_line_error(invoke("report", toy), "shapes.json", "fix or remove it")


def test_analyzer_image_flags_reach_the_flop_count(toy):
    # report spells the model and input flags as analyze does, --image-size, --crops and --full-logits included.
    args = ("report", toy, "--model", "deepseek-ocr2", "--mode", "gundam", "--counters", "analytic", "--format", "json")
    result = invoke(*args, "--image-size", "1700x2200", "--crops", "3", "--full-logits", "--new-tokens", "3")
    assert result.exit_code == 0, result.output
    inputs = json.loads(result.stdout)["flops_source"]["inputs"]
    assert (inputs["mode"], inputs["crops"], inputs["full_logits"]) == ("gundam", 3, True)
    assert inputs["image_size"] == [1700, 2200]


def test_input_flags_say_their_default_comes_from_the_trace():
    help_text = " ".join(invoke("report", "--help").stdout.split())
    assert "--image-size" in help_text and "--full-logits" in help_text
    assert "the run's shapes.json, else 32" in help_text  # --new-tokens
