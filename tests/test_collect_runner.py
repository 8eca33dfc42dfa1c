"""The built-in runner on CPU: tiny models, exact token counts, stage ranges, shapes.json, run.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from collect_helpers import Recorder
from conftest import FAKE_NSYS, ROOT
from tiny_models import TINY_LM, TINY_LMS

from stagemfu.collect import api
from stagemfu.collect.model_run import merge_shapes
from stagemfu.collect.run_options import RunnerOptions
from stagemfu.models import Inputs

pytest.importorskip("torch")
pytest.importorskip("transformers")

from stagemfu.collect.runner import main, run_model  # noqa: E402

TINY_LLAMA = {"model_type": "llama", **TINY_LM, **TINY_LMS["llama"]}


@pytest.fixture
def llama_dir(tmp_path):
    directory = tmp_path / "tiny-llama"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(TINY_LLAMA))
    return directory


def cpu_options(model: str, **inputs) -> RunnerOptions:
    return RunnerOptions(model=model, inputs=Inputs(dtype="fp32", **inputs), repeat=2, device="cpu")


def test_decoder_lm_runs_warmup_and_measured_with_exact_token_counts(tmp_path, llama_dir):
    with api.recording_to(Recorder()) as rec:
        doc = run_model(cpu_options(str(llama_dir), text_tokens=6, new_tokens=4, batch=2), out_dir=tmp_path / "o")
    one_call = ["prefill"] + ["decode"] * 3
    expected = [p for name in ("warmup", "measured", "measured") for p in [name] + [f"{name}/{s}" for s in one_call]]
    assert rec.paths == expected and rec.stack == []
    assert doc["generated_tokens"] == 4 and doc["shapes"]["prompt_tokens"] == 6
    assert [len(doc["call_wall_ns"][k]) for k in ("warmup", "measured")] == [1, 2]
    assert all(isinstance(ns, int) and ns > 0 for ns in doc["call_wall_ns"]["measured"])
    assert json.loads((tmp_path / "o" / "shapes.json").read_text()) == json.loads(json.dumps(doc))


def test_shapes_json_says_what_report_needs_to_count_the_same_flops(tmp_path, llama_dir):
    override = tmp_path / "over.json"
    override.write_text(json.dumps({"num_hidden_layers": 1}))
    options = RunnerOptions(
        model=str(llama_dir), config=override, inputs=Inputs(dtype="fp32", text_tokens=5, new_tokens=2), device="cpu"
    )
    with api.recording_to(Recorder()):
        doc = run_model(options, out_dir=tmp_path)
    assert doc["schema"] == "stagemfu.shapes/1"
    assert doc["model"] == str(llama_dir) and doc["config"] == str(override)
    assert doc["inputs"] == {
        "mode": "base", "image_size": None, "crops": None, "text_tokens": 5, "new_tokens": 2, "batch": 1,
        "dtype": "fp32", "full_logits": False,
    }  # fmt: skip
    assert doc["weights"] == "random" and any("random" in n for n in doc["notes"])
    assert doc["family"] == "llama" and doc["stage_modules"] == {} and doc["device_name"] == "cpu"
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"schema": "stagemfu.run/1", "exit_status": 0}))
    merge_shapes(run_json, tmp_path / "shapes.json")
    merged = json.loads(run_json.read_text())
    assert merged["model"] == str(llama_dir) and merged["config"] == str(override)
    assert merged["inputs"] == doc["inputs"] and merged["exit_status"] == 0
    assert merged["runner"] == json.loads(json.dumps(doc))


def test_ocr2_vision_stages_nest_inside_prefill(tmp_path):
    from tiny_models import TINY_OCR2

    override = tmp_path / "tiny-ocr2.json"
    override.write_text(json.dumps(TINY_OCR2))
    options = RunnerOptions(
        model="deepseek-ocr2",
        config=override,
        inputs=Inputs(mode="gundam", crops=2, text_tokens=5, new_tokens=3, dtype="fp32"),
        device="cpu",
    )
    with api.recording_to(Recorder()) as rec:
        doc = run_model(options, out_dir=tmp_path)
    measured = [p for p in rec.paths if p.startswith("measured")]
    assert measured[:2] == ["measured", "measured/prefill"]
    assert measured[2] == "measured/prefill/vision"
    vision = {p for p in measured if p.startswith("measured/prefill/vision/")}
    assert vision == {f"measured/prefill/vision/{s}" for s in ("sam", "encoder", "projector")}
    assert measured.count("measured/decode") == 2 and not any(p.startswith("measured/decode/") for p in measured)
    assert doc["shapes"]["crops"] == 2 and set(doc["stage_modules"]) == {"vision", "sam", "encoder", "projector"}


def test_real_image_goes_through_the_models_own_processor(tmp_path):
    from PIL import Image
    from tiny_models import TINY_OCR2

    override = tmp_path / "tiny-ocr2.json"
    override.write_text(json.dumps(TINY_OCR2))
    page = tmp_path / "page.png"
    Image.new("RGB", (1700, 2200), (200, 10, 10)).save(page)
    options = RunnerOptions(
        model="deepseek-ocr2",
        config=override,
        inputs=Inputs(mode="gundam", text_tokens=4, new_tokens=2, dtype="fp32"),
        image=page,
        device="cpu",
    )
    with api.recording_to(Recorder()):
        doc = run_model(options, out_dir=tmp_path)
    assert doc["inputs"]["image_size"] == (1700, 2200) and doc["shapes"]["crop_grid"] == (2, 3)
    assert doc["image"] == str(page) and "DeepseekOcr2ImageProcessor" in doc["notes"][-1]


def test_runner_errors_exit_2_with_one_line(tmp_path, llama_dir):
    result = CliRunner().invoke(main, [str(llama_dir), "--device", "cuda:7", "--out-dir", str(tmp_path)])
    if result.exit_code == 0:
        pytest.skip("this machine has 8 GPUs")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("Error: --device cuda:7")
    result = CliRunner().invoke(main, ["no-such-model", "--device", "cpu"])
    assert result.exit_code == 2 and result.output.startswith("Error: ")


def test_runner_runs_as_a_module_without_nsys(tmp_path, llama_dir):
    args = [str(llama_dir), "--device", "cpu", "--dtype", "fp32", "--text-tokens", "4", "--new-tokens", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "stagemfu.collect.runner", *args, "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "1 warm-up + 1 measured" in done.stdout and "weights: random" in done.stdout
    assert json.loads((tmp_path / "shapes.json").read_text())["generated_tokens"] == 2


def test_stagemfu_run_profiles_the_runner_and_records_its_shapes(tmp_path, llama_dir, monkeypatch):
    from stagemfu.cli import cli

    monkeypatch.setenv("NSYS", str(FAKE_NSYS))
    args = ["run", str(llama_dir), "--device", "cpu", "--dtype", "fp32", "--text-tokens", "4", "--new-tokens", "2"]
    result = CliRunner().invoke(cli, [*args, "-d", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["exit_status"] == 0 and doc["model"] == str(llama_dir)
    assert doc["inputs"]["new_tokens"] == 2 and doc["runner"]["generated_tokens"] == 2
    assert doc["command"][1:4] == ["-m", "stagemfu.collect.runner", str(llama_dir)]


def test_op_shapes_runs_one_more_generate_under_emit_nvtx(tmp_path, llama_dir, monkeypatch):
    import contextlib

    import torch

    entered = []

    @contextlib.contextmanager
    def emit_nvtx(record_shapes=False):  # this CPU build of torch has no NVTX profiler: stand in for it
        entered.append((api.ranges().stack[:], record_shapes))
        yield

    monkeypatch.setattr(torch.autograd.profiler, "emit_nvtx", emit_nvtx)
    options = RunnerOptions(
        model=str(llama_dir), inputs=Inputs(dtype="fp32", text_tokens=4, new_tokens=3), device="cpu", op_shapes=True
    )
    with api.recording_to(Recorder()) as rec:
        doc = run_model(options, out_dir=tmp_path)
    assert rec.paths[-4:] == ["op_shapes", "op_shapes/prefill", "op_shapes/decode", "op_shapes/decode"]
    assert entered == [([], True), (["op_shapes"], True)]  # the check before building, then the one call
    assert doc["op_shapes"] is True and len(doc["call_wall_ns"]["op_shapes"]) == 1
    assert "--op-shapes" in options.argv()


def test_op_shapes_without_a_cuda_build_is_one_line(tmp_path, llama_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch can emit NVTX op ranges")
    result = CliRunner().invoke(main, [str(llama_dir), "--device", "cpu", "--op-shapes", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--op-shapes: torch" in result.output and "CUDA build" in result.output
