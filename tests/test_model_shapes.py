"""Model presets, local configs and the image-token rules of both DeepSeek-OCR models."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagemfu.errors import ModelConfigError
from stagemfu.models import MODEL_PRESETS, Inputs, load_model_spec, resolve_shapes
from stagemfu.models.shapes import ranges_per_generation

LLAMA_TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}


@pytest.fixture(scope="module")
def ocr1():
    return load_model_spec("deepseek-ocr")


@pytest.fixture(scope="module")
def ocr2():
    return load_model_spec("deepseek-ocr2")


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_presets_carry_the_published_values_and_their_source():
    for name in MODEL_PRESETS:
        spec = load_model_spec(name)
        assert spec.name == spec.family.name == name
        assert "huggingface.co" in spec.source
        assert "_source" not in spec.config
    v1 = load_model_spec("deepseek-ocr").config
    assert v1["language_config"]["n_routed_experts"] == 64
    assert v1["vision_config"]["width"]["sam_vit_b"]["downsample_channels"] == [512, 1024]
    assert v1["projector_config"]["input_dim"] == 2048
    text = load_model_spec("deepseek-ocr2").config["text_config"]
    assert (text["num_hidden_layers"], text["hidden_size"], text["num_experts_per_tok"]) == (12, 1280, 6)
    assert text["mlp_layer_types"] == ["dense"] + ["sparse"] * 11


def test_ocr2_preset_is_a_valid_transformers_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.DeepseekOcr2Config(**load_model_spec("deepseek-ocr2").config)
    assert config.vision_config.sam_config.mlp_dim == 3072
    assert config.vision_config.encoder_config.num_key_value_heads == 2
    assert config.text_config.head_dim == 128


@pytest.mark.parametrize(("mode", "tokens"), [("tiny", 73), ("small", 111), ("base", 273), ("large", 421)])
def test_ocr1_single_view_tokens_are_rows_of_tokens_plus_newline_plus_separator(ocr1, mode, tokens):
    shapes = resolve_shapes(ocr1, Inputs(mode=mode, text_tokens=10))
    side = shapes.base_size // 64  # 16-pixel patches, two stride-2 convolutions
    assert shapes.image_tokens == side * (side + 1) + 1 == tokens
    assert shapes.prompt_tokens == tokens + 10
    assert shapes.crop_grid == (0, 0)


def test_ocr1_gundam_adds_a_tiled_crop_grid_with_newlines(ocr1):
    shapes = resolve_shapes(ocr1, Inputs(mode="gundam", crops=4))
    assert (shapes.base_size, shapes.local_size, shapes.crop_grid, shapes.crops) == (1024, 640, (2, 2), 4)
    assert shapes.image_tokens == 273 + (10 * 2 + 1) * (10 * 2)


def test_ocr2_tokens_are_queries_per_view_plus_separator(ocr2):
    assert resolve_shapes(ocr2, Inputs(mode="base")).image_tokens == 256 + 1
    gundam = resolve_shapes(ocr2, Inputs(mode="gundam", crops=4))
    assert (gundam.local_size, gundam.crop_grid, gundam.image_tokens) == (768, (2, 2), 256 + 4 * 144 + 1)


def test_crop_count_without_image_picks_the_squarest_grid_wider_first(ocr1):
    grids = {n: resolve_shapes(ocr1, Inputs(mode="gundam", crops=n)).crop_grid for n in (2, 3, 6, 8, 9)}
    assert grids == {2: (2, 1), 3: (3, 1), 6: (3, 2), 8: (4, 2), 9: (3, 3)}
    tall = resolve_shapes(ocr1, Inputs(mode="gundam", crops=6, image_size=(2000, 3000))).crop_grid
    assert tall == (2, 3)


def test_image_size_picks_the_grid_by_each_models_own_rule(ocr1, ocr2):
    # 1280x1024 (aspect 1.25) ties 2x2 and 3x2; the larger grid wins only while the image covers
    # more than half its tiles: yes for 640 tiles (1310720 > 1228800), no for 768 tiles.
    assert resolve_shapes(ocr1, Inputs(mode="gundam", image_size=(1280, 1024))).crop_grid == (3, 2)
    assert resolve_shapes(ocr2, Inputs(mode="gundam", image_size=(1280, 1024))).crop_grid == (2, 2)
    assert resolve_shapes(ocr1, Inputs(mode="gundam", image_size=(600, 2000))).crop_grid == (1, 3)


def test_an_image_no_larger_than_one_crop_gets_no_crops(ocr1, ocr2):
    assert resolve_shapes(ocr1, Inputs(mode="gundam", image_size=(640, 500))).image_tokens == 273
    assert resolve_shapes(ocr2, Inputs(mode="gundam", image_size=(768, 768))).image_tokens == 257


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 6000), height=st.integers(1, 6000))
def test_ocr2_grid_matches_transformers_image_processor(width, height):
    pil = pytest.importorskip("transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2")
    shapes = resolve_shapes(load_model_spec("deepseek-ocr2"), Inputs(mode="gundam", image_size=(width, height)))
    if max(width, height) <= 768:  # the processor's _preprocess crops only larger images
        assert shapes.crop_grid == (0, 0)
    else:
        assert shapes.crop_grid == pil.get_optimal_tiled_canvas((height, width), (768, 768), 2, 6)


def test_text_only_model_has_no_image_tokens(tmp_path):
    spec = load_model_spec(str(write_json(tmp_path / "config.json", LLAMA_TINY).parent))
    assert (spec.family.name, spec.name) == ("llama", tmp_path.name)
    shapes = resolve_shapes(spec, Inputs(text_tokens=100, mode="large"))
    assert (shapes.image_tokens, shapes.prompt_tokens, shapes.base_size) == (0, 100, 0)


def test_config_override_merges_nested_keys(tmp_path):
    small = write_json(tmp_path / "small.json", {"text_config": {"num_hidden_layers": 2}})
    spec = load_model_spec("deepseek-ocr2", config=small)
    assert spec.config["text_config"]["num_hidden_layers"] == 2
    assert spec.config["text_config"]["hidden_size"] == 1280
    assert str(small) in spec.source
    assert load_model_spec("deepseek-ocr2").config["text_config"]["num_hidden_layers"] == 12


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (Inputs(mode="tiny"), "mode 'tiny' is not one of this model's modes (base, gundam)"),
        (Inputs(mode="gundam"), "gundam mode needs --crops N (2..6, or 0)"),
        (Inputs(mode="gundam", crops=7), "--crops 7 is out of range"),
        (Inputs(mode="gundam", crops=1), "--crops 1 is out of range"),
        (Inputs(mode="base", crops=2), "local crops exist only in gundam mode"),
        (Inputs(text_tokens=-1), "--text-tokens -1: must be a positive whole number"),
        (Inputs(new_tokens=0), "--new-tokens 0"),
        (Inputs(batch=0), "--batch 0"),
        (Inputs(dtype="int8"), "--dtype int8: unknown"),
        (Inputs(mode="huge"), "--mode huge: unknown"),
    ],
)
def test_bad_inputs_raise_one_line(ocr2, inputs, message):
    with pytest.raises(ModelConfigError) as err:
        resolve_shapes(ocr2, inputs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_model_arguments_raise_one_line(tmp_path):
    cases = {
        "no-such-model": "not a preset (deepseek-ocr2, deepseek-ocr) and no config.json there",
        str(write_json(tmp_path / "bert.json", {"model_type": "bert"})): "model_type 'bert' is not supported",
        str(
            write_json(tmp_path / "partial.json", {"model_type": "llama", "hidden_size": 8})
        ): "num_hidden_layers is missing",
    }
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    cases[str(tmp_path / "broken.json")] = "not valid JSON"
    for model, message in cases.items():
        with pytest.raises(ModelConfigError, match="^[^\n]*$") as err:
            load_model_spec(model)
        assert message in str(err.value)


def test_override_that_removes_a_required_key_is_refused(tmp_path):
    broken = write_json(tmp_path / "o.json", {"language_config": {"n_routed_experts": None}})
    with pytest.raises(ModelConfigError, match="language_config.n_routed_experts"):
        load_model_spec("deepseek-ocr", config=broken)


def test_token_side_follows_the_config_downsampling(tmp_path):
    # three stride-2 convolutions instead of two halve the token grid once more
    override = {"vision_config": {"sam_config": {"downsample_channels": [8, 8, 896]}}}
    spec = load_model_spec("deepseek-ocr2", config=write_json(tmp_path / "o.json", override))
    assert resolve_shapes(spec, Inputs()).image_tokens == math.ceil(1024 / 16 / 8) ** 2 + 1


@pytest.mark.parametrize(
    ("new_tokens", "crops", "expected"),
    [
        (1, 0, {}),
        (8, 0, {"decode": 7}),
        (8, 4, {"decode": 7, "sam": 2, "clip": 2, "encoder": 2, "projector": 2}),
        (0, 6, {"sam": 2, "clip": 2, "encoder": 2, "projector": 2}),
    ],
)
def test_ranges_per_generation(new_tokens, crops, expected):
    """decode: one range per token after the first; with local crops the vision tower runs twice."""
    assert ranges_per_generation(new_tokens, crops) == expected
