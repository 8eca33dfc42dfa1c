"""Building the real models: published presets on the meta device, tiny ones that generate on CPU."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import TINY_LMS, tiny_spec  # noqa: E402

from stagemfu.errors import ModelConfigError  # noqa: E402
from stagemfu.models import Inputs, load_model_spec, resolve_shapes  # noqa: E402
from stagemfu.models.build import (  # noqa: E402
    build_model,
    example_inputs,
    language_model,
    resolve,
    stage_modules,
)


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_published_deepseek_ocr_builds_on_meta_with_its_published_size():
    spec = load_model_spec("deepseek-ocr")
    model = build_model(spec)
    assert next(model.parameters()).device.type == "meta"
    # deepseek-ai/DeepSeek-OCR ships one 6.67 GB bf16 safetensors file: ~3.34e9 parameters.
    assert parameters(model) == pytest.approx(3.336e9, rel=2e-3)
    # Paper (arXiv 2510.18234, sec. 3.2): SAM-base ~80M (+ the two downsample convs), CLIP-large ~300M.
    assert parameters(model.model.vision_tower.sam_encoder) == pytest.approx(95.6e6, rel=1e-3)
    assert parameters(model.model.vision_tower.clip_encoder) == pytest.approx(303.2e6, rel=1e-3)


@pytest.mark.parametrize("model_name", ["deepseek-ocr", "deepseek-ocr2"])
def test_language_model_has_the_published_570m_active_parameters(model_name):
    """DeepSeek's '3B MoE, 570M activated': LM weights a token runs through, input embedding aside."""
    spec = load_model_spec(model_name)
    model = build_model(spec)
    backbone, head = language_model(spec, model)
    text = model.config.text_config
    experts = sum(p.numel() for name, p in backbone.named_parameters() if ".mlp.experts." in name)
    active = parameters(backbone) - experts + experts * text.num_experts_per_tok // text.n_routed_experts
    active += parameters(head) - backbone.embed_tokens.weight.numel()
    assert active == pytest.approx(570e6, rel=0.01)
    assert parameters(backbone) + parameters(head) == pytest.approx(2.935e9, rel=1e-3)


def test_published_deepseek_ocr2_builds_on_meta_with_transformers_own_class():
    spec = load_model_spec("deepseek-ocr2")
    model = build_model(spec)
    assert type(model).__name__ == "DeepseekOcr2ForConditionalGeneration"
    assert parameters(model) == pytest.approx(3.389e9, rel=1e-3)
    # The OCR-2 vision encoder is Qwen2-0.5B-sized (24 layers, 896 wide, GQA 14/2 heads).
    assert parameters(model.model.vision_tower.vision_encoder) == pytest.approx(357.9e6, rel=1e-3)


@pytest.mark.parametrize(
    ("model_name", "mode", "crops"),
    [
        ("deepseek-ocr", "tiny", None),
        ("deepseek-ocr", "large", None),
        ("deepseek-ocr", "gundam", 6),
        ("deepseek-ocr2", "base", None),
        ("deepseek-ocr2", "gundam", 3),
    ],
)
def test_published_model_makes_one_image_embedding_per_placeholder(model_name, mode, crops):
    """The model's own image features (run on meta) fill exactly the prompt's placeholders."""
    spec = load_model_spec(model_name)
    shapes = resolve_shapes(spec, Inputs(mode=mode, crops=crops, batch=2))
    kwargs = example_inputs(spec, shapes, device="meta")
    model = build_model(spec)
    images = {key: value for key, value in kwargs.items() if key not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        features = resolve(model, stage_modules(spec, model)["vision"])(**images)
    per_sample = [f.shape[0] for f in getattr(features, "pooler_output", features)]
    assert per_sample == [shapes.image_tokens] * 2
    input_ids = example_inputs(spec, shapes, device="cpu")["input_ids"]
    assert input_ids.shape == kwargs["input_ids"].shape == (2, shapes.prompt_tokens)
    assert (input_ids == model.config.image_token_id).sum(dim=1).tolist() == [shapes.image_tokens] * 2


@pytest.mark.parametrize(
    ("model_name", "mode", "crops"),
    [("deepseek-ocr", "gundam", 2), ("deepseek-ocr2", "gundam", 2)],
)
def test_tiny_ocr_model_generates_on_cpu(tmp_path, model_name, mode, crops):
    spec = tiny_spec(tmp_path, model_name)
    shapes = resolve_shapes(spec, Inputs(mode=mode, crops=crops, text_tokens=5, dtype="fp32"))
    model = build_model(spec, device="cpu", dtype="fp32")
    kwargs = example_inputs(spec, shapes, device="cpu")
    with torch.no_grad():
        out = model.generate(**kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, shapes.prompt_tokens + 3)
    assert torch.equal(out[:, : shapes.prompt_tokens], kwargs["input_ids"])


@pytest.mark.parametrize("model_type", sorted(TINY_LMS))
def test_tiny_decoder_lm_generates_on_cpu(tmp_path, model_type):
    spec = tiny_spec(tmp_path, model_type)
    assert spec.family.name == model_type and spec.dims.vision is None
    shapes = resolve_shapes(spec, Inputs(text_tokens=7, batch=2, dtype="fp32"))
    model = build_model(spec, device="cpu", dtype="fp32")
    kwargs = example_inputs(spec, shapes, device="cpu")
    assert set(kwargs) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        out = model.generate(**kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, 10)
    assert stage_modules(spec, model) == {}


def test_stage_paths_name_the_modules_that_run_each_vision_stage(tmp_path):
    spec = tiny_spec(tmp_path, "deepseek-ocr")
    model = build_model(spec)
    stages = stage_modules(spec, model)
    assert set(stages) == {"vision", "sam", "clip", "projector"}
    assert isinstance(resolve(model, stages["sam"]), torch.nn.Module)
    assert type(resolve(model, stages["sam"])).__name__ == "DeepseekOcr2SamVisionEncoder"
    assert callable(resolve(model, stages["vision"]))
    other = load_model_spec("deepseek-ocr2")
    with pytest.raises(ModelConfigError, match="encoder"):
        stage_modules(other, model)


def test_example_inputs_are_the_same_on_every_call(tmp_path):
    spec = tiny_spec(tmp_path, "deepseek-ocr2")
    shapes = resolve_shapes(spec, Inputs(mode="gundam", crops=2, text_tokens=9, dtype="fp32"))
    first, second = (example_inputs(spec, shapes, device="cpu") for _ in range(2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in ("input_ids", "pixel_values", "pixel_values_local"))
    assert first["input_ids"][0, 0] == 0  # BOS, then the image placeholders
    assert first["pixel_values_local"].shape == (2, 3, 768, 768)


def test_checkpoint_directory_round_trips_and_a_foreign_one_is_refused(tmp_path):
    spec = tiny_spec(tmp_path, "deepseek-ocr")
    model = build_model(spec, device="cpu", dtype="fp32")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = build_model(spec, device="cpu", dtype="fp32", weights=tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    llama = build_model(tiny_spec(tmp_path, "llama"), device="cpu", dtype="fp32")
    llama.save_pretrained(tmp_path / "llama-ckpt")
    with pytest.raises(ModelConfigError, match="lacks .* weights"):
        build_model(spec, device="cpu", dtype="fp32", weights=tmp_path / "llama-ckpt")


@pytest.mark.parametrize(
    ("family", "config", "message"),
    [
        ("llama", {"model_type": "llama", "hidden_size": 60, "num_attention_heads": 7}, "cannot build"),
        ("llama", {"model_type": "no_such_model", "hidden_size": 64}, "cannot build"),
        ("deepseek-ocr", {"language_config": {"hidden_size": 64}}, "missing key"),
    ],
)
def test_config_transformers_cannot_build_raises_one_line(tmp_path, family, config, message):
    """A config the loader's checks would refuse, handed to the builder directly: its own errors are one line too."""
    spec = dataclasses.replace(tiny_spec(tmp_path, family), config=config, source="bad.json")
    with pytest.raises(ModelConfigError, match=message) as err:
        build_model(spec)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("bad.json")
