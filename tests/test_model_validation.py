"""Hostile model configs and inputs: every one gives a valid analysis or one error line, never a traceback.

The property: for any family, a config with any of its keys set to any JSON value (negative, zero,
huge, a boolean, a float, a string, null, a list, an object), and any input shape, either loads and
analyzes to non-negative integer counts that fit 64 bits, or raises one ``ModelConfigError`` line
that names the file. The examples from the adversarial pass are checked through the command line.
"""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import TINY_LM, TINY_LMS, TINY_OCR1, TINY_OCR2

from stagemfu.analyzer import INT64_MAX, analyze
from stagemfu.cli import cli
from stagemfu.errors import MissingDependencyError, ModelConfigError
from stagemfu.models import Inputs, load_model_spec

# Every key some family reads, per family (dotted for nested OCR keys).
LM_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
           "intermediate_size", "vocab_size", "tie_word_embeddings", "attention_bias", "mlp_bias", "sliding_window",
           "use_sliding_window", "model_type"]  # fmt: skip
FAMILY_KEYS = {
    "llama": LM_KEYS,
    "mistral": LM_KEYS,
    "qwen2": LM_KEYS,
    "qwen3": LM_KEYS,
    "mixtral": [*LM_KEYS, "num_local_experts", "num_experts_per_tok"],
    "deepseek_v2": [*LM_KEYS, "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
                    "first_k_dense_replace", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                    "v_head_dim"],
    "deepseek_v3": [*LM_KEYS, "n_routed_experts", "num_experts_per_tok", "q_lora_rank", "kv_lora_rank",
                    "qk_rope_head_dim"],
    "qwen2_moe": [*LM_KEYS, "num_experts", "num_experts_per_tok", "moe_intermediate_size", "qkv_bias",
                  "shared_expert_intermediate_size", "mlp_only_layers", "decoder_sparse_step"],
    "qwen3_moe": [*LM_KEYS, "num_experts", "num_experts_per_tok", "moe_intermediate_size", "mlp_only_layers",
                  "decoder_sparse_step"],
}  # fmt: skip
OCR_KEYS = {
    "deepseek-ocr": (TINY_OCR1, [
        "language_config.hidden_size", "language_config.num_attention_heads", "language_config.n_routed_experts",
        "language_config.num_experts_per_tok", "language_config.first_k_dense_replace", "language_config.use_mla",
        "vision_config.width.sam_vit_b.width", "vision_config.width.sam_vit_b.heads",
        "vision_config.width.sam_vit_b.global_attn_indexes", "vision_config.width.sam_vit_b.downsample_channels",
        "vision_config.width.clip-l-14-224.width", "vision_config.width.clip-l-14-224.layers",
        "vision_config.image_size", "projector_config.input_dim", "projector_config.n_embed",
        "vision_config.width", "language_config"]),
    "deepseek-ocr2": (TINY_OCR2, [
        "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.mlp_layer_types",
        "text_config.num_experts_per_tok", "text_config.n_shared_experts", "vision_config.sam_config.hidden_size",
        "vision_config.sam_config.mlp_ratio", "vision_config.sam_config.patch_size",
        "vision_config.sam_config.window_size", "vision_config.sam_config.global_attn_indexes",
        "vision_config.encoder_config.num_key_value_heads", "vision_config.encoder_config.hidden_size",
        "vision_config.sam_config", "vision_config"]),
}  # fmt: skip

HOSTILE = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-3, 70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-2, 20), max_size=4),
    st.builds(dict),  # a fresh object each time: set_dotted may write into it
    st.builds(lambda: ["dense", "sparse", "moe"]),
)
SHAPES = st.builds(
    Inputs,
    text_tokens=st.one_of(st.integers(-2, 50), st.integers(2**20, 2**40)),
    new_tokens=st.integers(-1, 6),
    batch=st.one_of(st.integers(-1, 4), st.just(2**31)),
)


def set_dotted(config: dict, key: str, value) -> dict:
    """``config`` with ``value`` at a dotted key path (intermediate objects created)."""
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[last] = value
    return config


def check_outcome(load, inputs: Inputs, where: str) -> None:
    """The property: an analysis of non-negative int64 counts, or one ModelConfigError line naming ``where``."""
    try:
        analysis = analyze(load(), inputs, counters=("analytic",))
    except ModelConfigError as err:
        message = str(err)
        assert message and "\n" not in message and len(message) < 600, message
        assert where in message or message.startswith("--"), message
        return
    assert analysis.stages.height
    for stage, entry in analysis.stages.rows_by_key("stage", named=True, unique=True).items():
        for column in ("flops", "bytes", "params"):
            value = entry[column]
            assert type(value) is int and 0 <= value <= INT64_MAX, (stage, column, value)
    assert 0 < analysis.params <= INT64_MAX


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), inputs=SHAPES)
def test_any_decoder_config_analyzes_or_fails_in_one_line(tmp_path_factory, data, inputs):
    family = data.draw(st.sampled_from(sorted(FAMILY_KEYS)))
    config = {"model_type": family, **TINY_LM, **TINY_LMS[family]}
    for key in data.draw(st.lists(st.sampled_from(FAMILY_KEYS[family]), min_size=1, max_size=3, unique=True)):
        config[key] = data.draw(HOSTILE)
    path = tmp_path_factory.mktemp("hostile") / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    check_outcome(lambda: load_model_spec(str(path)), inputs, str(path))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_ocr_override_analyzes_or_fails_in_one_line(tmp_path_factory, data):
    preset = data.draw(st.sampled_from(sorted(OCR_KEYS)))
    tiny, keys = OCR_KEYS[preset]
    override = json.loads(json.dumps(tiny))
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True)):
        set_dotted(override, key, data.draw(HOSTILE))
    path = tmp_path_factory.mktemp("hostile") / "override.json"
    path.write_text(json.dumps(override), encoding="utf-8")
    inputs = data.draw(st.sampled_from([Inputs(text_tokens=5, new_tokens=3), Inputs(mode="gundam", crops=2)]))
    check_outcome(lambda: load_model_spec(preset, config=path), inputs, str(path))


EXPERT_KEYS = {"mixtral": "num_local_experts", "deepseek_v2": "n_routed_experts", "deepseek_v3": "n_routed_experts",
               "qwen2_moe": "num_experts", "qwen3_moe": "num_experts"}  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    family=st.sampled_from(sorted(FAMILY_KEYS)),
    hidden=st.integers(1, 96),
    heads=st.integers(1, 8),
    kv_heads=st.integers(1, 8),
    layers=st.integers(1, 4),
    experts=st.integers(1, 8),
    top_k=st.integers(1, 8),
    inputs=st.builds(Inputs, text_tokens=st.integers(1, 64), new_tokens=st.integers(1, 8), batch=st.integers(1, 4)),
)
def test_valid_sizes_give_positive_counts_and_rule_breaks_name_the_key(
    tmp_path_factory, family, hidden, heads, kv_heads, layers, experts, top_k, inputs
):
    """Random sizes: those that keep the rules analyze to positive counts; others are refused naming the rule."""
    config = {"model_type": family, **TINY_LM, **TINY_LMS[family], "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "num_experts_per_tok": top_k}  # fmt: skip
    config.pop("head_dim", None)
    config.pop("mlp_only_layers", None)
    moe = family in EXPERT_KEYS
    if moe:
        config[EXPERT_KEYS[family]] = experts
    path = tmp_path_factory.mktemp("sizes") / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    broken = [
        f"num_key_value_heads = {kv_heads} must divide" if heads % kv_heads else None,
        # Qwen3 defaults head_dim to 128, not hidden / heads, so its heads need not divide the width
        f"num_attention_heads = {heads} must divide hidden_size" if family != "qwen3" and hidden % heads else None,
        f"num_experts_per_tok = {top_k} must be at most" if moe and top_k > experts else None,
    ]
    if any(broken):
        with pytest.raises(ModelConfigError) as err:
            load_model_spec(str(path))
        assert any(rule and rule in str(err.value) for rule in broken), str(err.value)
        return
    analysis = analyze(load_model_spec(str(path)), inputs, counters=("analytic",))
    assert all(
        entry["flops"] > 0 and entry["bytes"] > 0
        for entry in analysis.stages.rows_by_key("stage", named=True, unique=True).values()
    )


# --- the adversarial pass's examples, through the command line -----------------------------------


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


LLAMA = {"model_type": "llama", **TINY_LM, "num_key_value_heads": 2}
MIXTRAL = {"model_type": "mixtral", **TINY_LM, "num_key_value_heads": 2, "num_local_experts": 4,
           "num_experts_per_tok": 2}  # fmt: skip


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({**LLAMA, "hidden_size": -2048}, ["hidden_size = -2048 must be from 1 to"]),
        ({**LLAMA, "num_hidden_layers": -3}, ["num_hidden_layers = -3 must be from 1 to"]),
        ({**LLAMA, "num_attention_heads": 0}, ["num_attention_heads = 0 must be from 1 to"]),
        ({**LLAMA, "hidden_size": True}, ["hidden_size = true must be a whole number"]),
        ({**LLAMA, "hidden_size": 2048.0}, ["hidden_size = 2048.0 must be a whole number"]),
        ({**LLAMA, "vocab_size": "32000"}, ["vocab_size = '32000' must be a whole number"]),
        ({**LLAMA, "hidden_size": 66}, ["num_attention_heads = 4 must divide hidden_size = 66"]),
        ({**LLAMA, "num_key_value_heads": 3}, ["num_key_value_heads = 3 must divide num_attention_heads = 4"]),
        ({**MIXTRAL, "num_experts_per_tok": 9}, ["num_experts_per_tok = 9 must be at most num_local_experts = 4"]),
        ({**MIXTRAL, "num_local_experts": 0}, ["num_local_experts = 0 must be from 1 to"]),
        ({**LLAMA, "tie_word_embeddings": "yes"}, ["tie_word_embeddings = 'yes' must be true or false"]),
    ],
)
def test_hostile_config_values_exit_2_naming_the_key_and_file(tmp_path, config, words):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    for command in (["analyze", path, "--counters", "analytic"], ["report", "--model", path]):
        assert_one_line_error(invoke(*command), str(path), *words)


def test_run_refuses_a_hostile_config_before_starting_nsys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA, "hidden_size": -2048}), encoding="utf-8")
    assert_one_line_error(invoke("run", path, "--dry-run"), str(path), "hidden_size = -2048")


def test_a_config_that_is_not_utf8_or_nested_too_deep_is_one_line(tmp_path):
    (tmp_path / "binary.json").write_bytes(b'{"model_type": "llama", "x": "\xff\xfe"}')
    assert_one_line_error(invoke("analyze", tmp_path / "binary.json"), "binary.json", "not UTF-8")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert_one_line_error(invoke("analyze", tmp_path / "deep.json"), "deep.json")
    (tmp_path / "list.json").write_text(json.dumps({"model_type": ["llama"]}), encoding="utf-8")
    assert_one_line_error(invoke("analyze", tmp_path / "list.json"), "model_type missing is not supported")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--text-tokens", "1e15"], ["--text-tokens", "not a valid integer"]),
        (["--text-tokens", "1000000000000000"], ["--text-tokens 1000000000000000", "at most 2147483647"]),
        (["--text-tokens", "2000000000"], ["prefill FLOPs would be", "past the 64-bit counts"]),
        (["--batch", "2000000000", "--new-tokens", "2000000000"], ["past the 64-bit counts"]),
    ],
)
def test_inputs_beyond_what_int64_can_count_exit_2(args, words):
    assert_one_line_error(invoke("analyze", "deepseek-ocr", "--counters", "analytic", *args), *words)


def test_the_largest_countable_inputs_still_analyze():
    result = invoke("analyze", "deepseek-ocr", "--counters", "analytic", "--text-tokens", "200000", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert all(0 < entry["flops"] <= INT64_MAX for entry in doc["stages"].values())


def test_a_counter_asked_for_that_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert_one_line_error(
        invoke("analyze", "deepseek-ocr", "--counters", "torch"), "--counters torch", "stagemfu[model]"
    )
    with pytest.raises(MissingDependencyError, match="--counters fvcore"):
        analyze(load_model_spec("deepseek-ocr"), Inputs(), counters=("analytic", "fvcore"))
    # not asked for: the analytic count, with a note naming what is missing
    analysis = analyze(load_model_spec("deepseek-ocr"), Inputs())
    assert all(
        entry["flops_torch"] is None for entry in analysis.stages.rows_by_key("stage", named=True, unique=True).values()
    )
    assert any("torch counter not run" in note for note in analysis.notes)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("text_tokens", True, "--text-tokens True"),
        ("batch", "8", "--batch 8"),
        ("mode", ["base"], "--mode"),
        ("crops", -1, "--crops -1"),
        ("image_size", (0, 5), "--image-size 0x5"),
        ("image_size", "big", "--image-size big"),
        ("dtype", None, "--dtype None"),
        ("full_logits", "yes", "--full-logits"),
    ],
)
def test_inputs_of_any_type_are_one_line(field, value, words):
    """Inputs also come from a shapes.json beside a trace, so any JSON type must give one line."""
    with pytest.raises(ModelConfigError, match="^[^\n]*$") as err:
        analyze(load_model_spec("deepseek-ocr"), Inputs(**{field: value}), counters=("analytic",))
    assert words in str(err.value)
