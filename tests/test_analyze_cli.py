"""``stagemfu analyze``: every output format, the help text, and one-line errors with exit 2."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from stagemfu.cli import cli

STAGES_V1 = ["vision", "sam", "clip", "projector", "prefill", "decode", "decode_first", "decode_last"]


def invoke(*args: object):
    return CliRunner().invoke(cli, ["analyze", *(str(a) for a in args)], catch_exceptions=False)


def assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


def test_table_lists_every_stage_with_the_analytic_count():
    result = invoke("deepseek-ocr", "--mode", "base", "--counters", "analytic")
    assert result.exit_code == 0, result.output
    for stage in STAGES_V1:
        assert f"│ {stage} " in result.stdout
    assert "273 image + 64 text" in result.stdout
    assert "analytic GFLOP" in result.stdout and "torch GFLOP" not in result.stdout


def test_json_follows_the_analyze_schema(tmp_path):
    out = tmp_path / "flops.json"
    result = invoke("deepseek-ocr2", "--mode", "gundam", "--crops", "4", "--counters", "analytic", "--format", "json",
                    "-o", out)  # fmt: skip
    assert result.exit_code == 0 and result.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["schema"] == "stagemfu.analyze/1"
    assert doc["model"]["name"] == "deepseek-ocr2"
    assert doc["inputs"]["crops"] == 4 and doc["shapes"]["image_tokens"] == 256 + 4 * 144 + 1
    assert list(doc["stages"]) == ["vision", "sam", "encoder", "projector", "prefill", "decode", "decode_first",
                                   "decode_last"]  # fmt: skip
    for entry in doc["stages"].values():
        assert set(entry) == {"flops", "flops_analytic", "flops_torch", "flops_fvcore", "bytes", "params", "notes",
                              "kv_read_bytes", "kv_write_bytes", "kv_bytes"}  # fmt: skip
        assert entry["flops"] == entry["flops_analytic"] > 0 and entry["flops_torch"] is None
        assert all(isinstance(entry[k], int) for k in ("flops", "bytes", "params"))


def test_csv_has_one_integer_row_per_stage():
    result = invoke("deepseek-ocr", "--counters", "analytic", "--format", "csv", "--new-tokens", "1")
    frame = pl.read_csv(result.stdout.encode())
    assert frame["stage"].to_list() == ["vision", "sam", "clip", "projector", "prefill"]  # one token: no decode
    assert frame.schema["flops"] == pl.Int64 and frame.schema["bytes"] == pl.Int64


def test_markdown_has_the_stage_table_and_notes():
    result = invoke("deepseek-ocr", "--counters", "analytic", "--format", "md")
    assert result.stdout.startswith("# stagemfu analyze")
    assert "| prefill |" in result.stdout and "## Notes" in result.stdout


def test_help_explains_stages_and_conventions():
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("decode_first", "2 FLOPs per multiply-accumulate", "padded windows", "--full-logits", "gundam"):
        assert text in " ".join(result.stdout.split()), text


def test_help_names_every_registered_model_type():
    from stagemfu.models.family import families

    text = " ".join(invoke("--help").stdout.split())
    for family in families().values():
        for model_type in family.model_types:
            assert model_type in text, model_type


def test_decoder_lm_config_directory(tmp_path):
    config = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = invoke(tmp_path, "--counters", "analytic", "--format", "json", "--text-tokens", "16")
    doc = json.loads(result.stdout)
    assert doc["model"]["family"] == "qwen2"
    assert list(doc["stages"]) == ["prefill", "decode", "decode_first", "decode_last"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["no-such-model"], ["no-such-model", "not a preset"]),
        (["deepseek-ocr2", "--mode", "tiny"], ["mode 'tiny'", "base, gundam"]),
        (["deepseek-ocr", "--text-tokens", "-5"], ["--text-tokens -5"]),
        (["deepseek-ocr", "--new-tokens", "0"], ["--new-tokens 0"]),
        (["deepseek-ocr", "--mode", "gundam", "--crops", "12"], ["--crops 12", "2..9"]),
        (["deepseek-ocr", "--mode", "gundam", "--image-size", "big"], ["--image-size", "WIDTHxHEIGHT"]),
        (["deepseek-ocr", "--counters", "analytic,magic"], ["--counters magic"]),
        (["deepseek-ocr", "--dtype", "int4"], ["--dtype"]),
    ],
)
def test_bad_input_exits_2_with_one_line(args, words):
    assert_one_line_error(invoke(*args), *words)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"model_type": "bert"}, ["model_type 'bert' is not supported", "llama"]),
        ({"model_type": "llama", "hidden_size": 64}, ["num_hidden_layers is missing"]),
    ],
)
def test_bad_config_file_exits_2_with_one_line(tmp_path, config, words):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert_one_line_error(invoke(tmp_path / "config.json", "--counters", "analytic"), str(tmp_path), *words)


def test_bad_override_file_exits_2_with_one_line(tmp_path):
    (tmp_path / "small.json").write_text("{not json")
    assert_one_line_error(invoke("deepseek-ocr", "--config", tmp_path / "small.json"), "small.json", "not valid JSON")
