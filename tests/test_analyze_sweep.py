"""``stagemfu analyze --sweep ... --gpu``: the stagemfu.analyze.sweep/1 contract, every format, and
one-line errors with exit 2 for bad sweep values."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import ROOT

from stagemfu.cli import cli

LLAMA = ROOT / "tests" / "fixtures" / "configs" / "llama-3.2-1b"
LM_STAGES = ["prefill", "decode", "decode_first", "decode_last"]
MANY = ",".join(map(str, range(1, 70)))  # 69 values: two such axes make 4,761 combinations


def invoke(*args: object):
    return CliRunner().invoke(cli, ["analyze", *(str(a) for a in args)], catch_exceptions=False)


def test_json_follows_the_sweep_contract():
    result = invoke(LLAMA, "--sweep", "batch=1,8", "--sweep", "text-tokens=64,512", "--gpu", "H100", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "stagemfu.analyze.sweep/1"
    assert doc["sweep"] == {"batch": [1, 8], "text_tokens": [64, 512]}
    gpu = doc["gpu"]
    assert (gpu["tflops"], gpu["bandwidth_gbs"], gpu["dtype"]) == (989.4, 3350.0, "bf16")
    assert gpu["ridge_intensity"] == pytest.approx(989.4e12 / 3350e9)
    assert [(r["values"], r["stage"]) for r in doc["rows"][:5]] == [
        ({"batch": 1, "text_tokens": 64}, s) for s in LM_STAGES
    ] + [({"batch": 1, "text_tokens": 512}, "prefill")]
    assert len(doc["rows"]) == 4 * len(LM_STAGES)
    for row in doc["rows"]:
        assert {
            "flops",
            "bytes",
            "kv_bytes",
            "kv_read_bytes",
            "kv_write_bytes",
            "intensity",
            "roofline_ns",
            "bound",
        } <= set(row)
        assert row["bound"] in ("memory", "compute")
        compute_ns, memory_ns = row["flops"] / (989.4e3), row["bytes"] / 3350
        assert row["roofline_ns"] == round(max(compute_ns, memory_ns))
        assert row["intensity"] == pytest.approx(row["flops"] / row["bytes"])
    assert [g["values"] for g in doc["generation"]] == [r["values"] for r in doc["rows"] if r["stage"] == "prefill"]
    assert doc["compute_bound"] == [
        {"values": {"text_tokens": 64}, "decode_batch": 464, "decode_intensity_max": None},
        {"values": {"text_tokens": 512}, "decode_batch": None, "decode_intensity_max": pytest.approx(134.5, abs=0.1)},
    ]


def test_table_shows_roofline_rows_generation_bounds_and_the_compute_bound_batch():
    result = invoke(LLAMA, "--sweep", "batch=1,512", "--gpu", "H200")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for words in ("Roofline per stage", "roofline ms", "KV GB held", "FLOP/B", "TTFT ms", "TPOT ms",
                  "decode turns compute-bound at batch", "ridge 206 FLOP/B"):  # fmt: skip
        assert words in out, words
    assert "compute" in out and "memory" in out


def test_csv_writes_the_table_asked_for():
    args = (LLAMA, "--sweep", "new_tokens=2,17", "--gpu", "H100", "--format", "csv")
    stages = pl.read_csv(invoke(*args).stdout.encode())
    assert stages.columns[:3] == ["point", "new_tokens", "stage"]
    assert stages.height == 8 and stages["roofline_ns"].dtype == pl.Int64
    generation = pl.read_csv(invoke(*args, "--table", "generation").stdout.encode())
    assert generation["new_tokens"].to_list() == [2, 17]
    assert (generation["tpot_ns"] * (generation["new_tokens"] - 1) - generation["decode_ns"]).abs().max() <= 8


def test_gpu_alone_reads_the_one_input_shape_against_the_roofline():
    doc = json.loads(invoke("deepseek-ocr2", "--gpu", "H100", "--dtype", "fp8", "--format", "json").stdout)
    assert doc["sweep"] == {} and doc["gpu"]["tflops"] == 1978.9
    assert {r["stage"] for r in doc["rows"]} >= {"vision", "prefill", "decode"}
    assert all(r["values"] == {} for r in doc["rows"])


def test_without_a_gpu_the_sweep_has_no_roofline_times():
    doc = json.loads(invoke(LLAMA, "--sweep", "batch=1,2", "--format", "json").stdout)
    assert doc["gpu"] is None and doc["compute_bound"] == []
    assert all(r["roofline_ns"] is None and r["intensity"] > 0 for r in doc["rows"])


def test_dtype_sets_the_bytes_per_value_and_the_peak():
    bf16, fp8 = (
        {
            r["stage"]: r
            for r in json.loads(invoke(LLAMA, "--gpu", "H100", "--dtype", d, "--format", "json").stdout)["rows"]
        }
        for d in ("bf16", "fp8")
    )
    assert fp8["decode"]["kv_bytes"] * 2 == bf16["decode"]["kv_bytes"]
    assert fp8["decode"]["flops"] == bf16["decode"]["flops"]


def test_markdown_holds_the_tables_and_the_ridge_lines():
    out = invoke(LLAMA, "--sweep", "batch=1,2", "--gpu", "H100", "--format", "md").stdout
    assert out.startswith("# stagemfu analyze --sweep") and "## Roofline per stage" in out
    assert "## Decode and the ridge point" in out


@pytest.mark.parametrize(
    ("sweep", "words"),
    [
        ("batch=0", ["--sweep batch=0", "0 is not a batch value"]),
        ("batch=1,x", ["x is not a batch value"]),
        ("batch=1,,2", ["(nothing) is not a batch value"]),
        ("batch=-4", ["-4 is not a batch value"]),
        ("batch=2.5", ["2.5 is not a batch value"]),
        ("batch=3000000000", ["3000000000 is not a batch value", "2147483647"]),
        ("batch=1,1", ["1 is given twice"]),
        ("batch", ["write NAME=V1,V2,..."]),
        ("temperature=1,2", ["NAME one of batch, text_tokens, new_tokens, crops, mode"]),
        ("mode=huge", ["mode huge is not one of"]),
        ("text_tokens=\x1b[2J", ["\\x1b[2J is not a text_tokens value"]),
        ("crops=2", ["at crops=2", "gundam"]),
    ],
)
def test_bad_sweep_values_exit_2_with_one_line(sweep, words):
    result = CliRunner().invoke(cli, ["analyze", "deepseek-ocr2", "--sweep", sweep, "--gpu", "H100"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    assert "\x1b" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sweep", "batch=1", "--sweep", "batch=2"], ["batch is swept twice"]),
        (["--sweep", f"batch={MANY}", "--sweep", f"text_tokens={MANY}"], ["4,761 combinations", "at most 4,096"]),
        (["--gpu", "Z100"], ["--gpu 'Z100'"]),
        (["--peak-bandwidth", "100"], ["--peak-bandwidth needs --gpu NAME or --peak-tflops"]),
        (["--peak-tflops", "100"], ["no memory bandwidth is known", "--peak-bandwidth"]),
        (["--format", "html"], ["--format html draws a sweep"]),
    ],
)  # fmt: skip
def test_bad_what_if_options_exit_2_with_one_line(args, words):
    result = CliRunner().invoke(cli, ["analyze", "deepseek-ocr2", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_text_only_model_has_no_crops_or_modes_to_sweep():
    result = CliRunner().invoke(cli, ["analyze", str(LLAMA), "--sweep", "mode=base,gundam"])
    assert result.exit_code == 2 and "llama-3.2-1b is a text-only model, which has no mode" in result.stderr
