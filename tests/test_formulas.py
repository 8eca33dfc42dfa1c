"""The FLOP formulas: hand-worked counts on tiny sizes, and the same counts measured by
``torch.utils.flop_counter`` and fvcore on transformers' own modules with small random configs."""

from __future__ import annotations

import json
import warnings

import pytest

from stagemfu.analyzer import analyze
from stagemfu.analyzer.analytic import count_analytic, stage_flops
from stagemfu.analyzer.formulas import (
    FLOP_FORMULAS,
    attention_scores,
    clip_layer,
    conv2d,
    flop_formula,
    gqa_projections,
    linear,
    moe,
    patch_embed,
    rel_pos,
    sam_layer,
    swiglu_mlp,
)
from stagemfu.models import Inputs, load_model_spec, resolve_shapes
from stagemfu.models.blocks import sam_blocks, sam_tokens
from stagemfu.models.dims import SamDims

TINY_SAM = SamDims(
    hidden=32,
    layers=2,
    heads=2,
    global_layers=1,
    mlp=64,
    patch=16,
    window=3,
    neck=16,
    downsample=(16, 24),
    image_size=256,
)


def test_a_block_type_takes_one_formula():
    with pytest.raises(ValueError, match="two FLOP formulas for block 'linear'"):
        flop_formula("linear")(lambda tokens, d_in, d_out: 0)
    assert FLOP_FORMULAS["linear"] is linear


def test_primitive_formulas_by_hand():
    assert linear(3, 4, 5) == 2 * 3 * 4 * 5 == 120
    assert conv2d(2, 2, 3, 4, 3) == 2 * (2 * 2 * 4) * (3 * 3 * 3) == 864
    assert patch_embed(32, 32, 3, 8, 16) == conv2d(2, 2, 3, 8, 16) == 2 * 4 * 8 * 3 * 256
    assert attention_scores(4, 6, 2, 8) == 2 * 2 * 4 * 6 * 8 * 2  # QK^T and PV
    assert attention_scores(1, 10, 2, 8, v_head_dim=4) == 2 * 2 * 10 * (8 + 4)
    assert rel_pos(3, 3, 2, 2) == 2 * 2 * 9 * (3 + 3) * 2
    assert swiglu_mlp(2, 4, 8) == 3 * 2 * 2 * 4 * 8
    assert gqa_projections(2, 8, 4, 1, 2) == 2 * 2 * 8 * (4 + 2) * 2 + 2 * 2 * 8 * 8
    router, routed, shared = 2 * 3 * 4 * 8, 2 * swiglu_mlp(3, 4, 5), swiglu_mlp(3, 4, 10)
    assert moe(3, 4, 5, experts=8, top_k=2, shared_intermediate=10) == router + routed + shared


def test_windowed_sam_layer_runs_on_padded_windows():
    # a 5x5 map in 3x3 windows is padded to 6x6: 4 windows of 9 tokens, 36 positions through qkv
    qkv, proj = 2 * 36 * 4 * 12, 2 * 36 * 4 * 4
    scores = 4 * (2 * 2 * 9 * 9 * (2 + 2))  # per window: heads 2, head_dim 2
    positions = 4 * (2 * 2 * 9 * (3 + 3) * 2)
    mlp = 2 * (2 * 25 * 4 * 8)  # the MLP sees the 25 real positions
    assert sam_layer(5, 5, window=3, hidden=4, heads=2, mlp=8) == qkv + scores + positions + proj + mlp
    unpadded = sam_layer(6, 6, window=3, hidden=4, heads=2, mlp=8) - 2 * (2 * 36 * 4 * 8) + mlp
    assert sam_layer(5, 5, window=3, hidden=4, heads=2, mlp=8) == unpadded


def test_hand_derived_count_of_a_tiny_decoder(tmp_path):
    config = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = load_model_spec(str(tmp_path))
    stages = analyze(spec, Inputs(text_tokens=3, new_tokens=3), counters=("analytic",)).stages.rows_by_key(
        "stage", named=True, unique=True
    )
    head_dim = 4
    per_token = 2 * 8 * (2 + 2 * 1) * head_dim + 2 * 8 * 8 + 3 * 2 * 8 * 16  # q,k,v + o + gate,up,down
    assert stages["prefill"]["flops"] == 2 * (3 * per_token + 2 * 2 * 3 * 3 * 8) + 2 * 8 * 10
    step = {t: 2 * (per_token + 2 * 2 * (3 + t) * 8) + 2 * 8 * 10 for t in (1, 2)}
    assert (stages["decode_first"]["flops"], stages["decode_last"]["flops"]) == (step[1], step[2])
    assert stages["decode"]["flops"] == step[1] + step[2]
    assert "vision" not in stages


# --- the same counts measured on transformers' modules ---------------------------------------


def torch_flops(module, *args, **kwargs) -> dict[str, int]:
    """FLOPs per module path (root first) of one no-grad forward under torch's FlopCounterMode."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


def fvcore_flops(module, *args) -> dict[str, int]:
    """fvcore's count per operator x 2 (fvcore counts one per multiply-accumulate)."""
    fvcore = pytest.importorskip("fvcore.nn")
    analysis = fvcore.FlopCountAnalysis(module, args)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {op: round(2 * flops) for op, flops in analysis.by_operator().items()}


@pytest.fixture(scope="module")
def tiny_vision():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2VisionModel

    config = transformers.DeepseekOcr2Config(
        vision_config={
            "sam_config": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                               global_attn_indexes=[1], image_size=256, patch_size=16, window_size=3,
                               output_channels=16, downsample_channels=[16, 24]),
            "encoder_config": dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=40, vocab_size=1),
        },
        attn_implementation="eager",
    )  # fmt: skip
    return DeepseekOcr2VisionModel(config.vision_config).eval()


def test_sam_and_encoder_match_torch_counter_exactly(tiny_vision):
    torch = pytest.importorskip("torch")
    measured = torch_flops(tiny_vision, torch.randn(1, 3, 256, 256))
    # 16x16 patches: the windowed layer runs 36 padded 3x3 windows, the global layer one 256-token map
    assert (
        measured["DeepseekOcr2VisionModel.sam_encoder"] == stage_flops(tuple(sam_blocks(TINY_SAM, 256, 1))).flops["sam"]
    )
    tokens = sam_tokens(TINY_SAM, 256)
    sequence = tokens + 144  # 16 SAM positions, then the 144 learnt queries
    layer = gqa_projections(sequence, 24, 4, 2, 6) + attention_scores(sequence, sequence, 4, 6)
    layer += swiglu_mlp(sequence, 24, 40)
    assert measured["DeepseekOcr2VisionModel.vision_encoder"] == 2 * layer


def test_sam_matches_fvcore_apart_from_layer_norms(tiny_vision):
    torch = pytest.importorskip("torch")
    expected = stage_flops(tuple(sam_blocks(TINY_SAM, 256, 1))).flops["sam"]
    measured = fvcore_flops(tiny_vision.sam_encoder, torch.randn(1, 3, 256, 256))
    # fvcore also counts layer norms (not matrix products, so not in the analytic count), and sizes
    # the relative-position einsums from numpy's contraction path (a few FLOPs off)
    assert measured.pop("layer_norm") > 0
    assert sum(measured.values()) == pytest.approx(expected, rel=1e-4)


def test_clip_layer_matches_torch_counter():
    torch = pytest.importorskip("torch")
    clip = pytest.importorskip("transformers.models.clip.modeling_clip")
    config = clip.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4)
    config._attn_implementation = "eager"
    layer = clip.CLIPEncoderLayer(config).eval()
    measured = torch_flops(layer, torch.randn(2, 10, 32), None)
    assert measured["Global"] == 2 * clip_layer(10, 32, 4, 64)


DECODERS = {
    "llama-gqa": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50},
    "mixtral-moe": {"model_type": "mixtral", "hidden_size": 32, "intermediate_size": 24, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 50, "num_local_experts": 4,
                    "num_experts_per_tok": 2},
    "deepseek-v3-mla": {"model_type": "deepseek_v3", "hidden_size": 32, "intermediate_size": 48,
                        "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 4, "vocab_size": 50, "q_lora_rank": 12, "kv_lora_rank": 8,
                        "qk_nope_head_dim": 6, "qk_rope_head_dim": 4, "v_head_dim": 5, "n_routed_experts": 4,
                        "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1,
                        "topk_group": 1},
    "deepseek-v2-lite-mla": {"model_type": "deepseek_v2", "hidden_size": 32, "intermediate_size": 48,
                             "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "vocab_size": 50, "q_lora_rank": None, "kv_lora_rank": 8, "qk_nope_head_dim": 6,
                             "qk_rope_head_dim": 4, "v_head_dim": 5, "n_routed_experts": 4, "num_experts_per_tok": 2,
                             "n_shared_experts": 2, "first_k_dense_replace": 1},
}  # fmt: skip


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_prefill_and_decode_step_match_torch_counter(tmp_path, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = DECODERS[name]
    (tmp_path / "config.json").write_text(json.dumps(config))
    stages = analyze(
        load_model_spec(str(tmp_path)), Inputs(text_tokens=7, new_tokens=2), counters=("analytic",)
    ).stages.rows_by_key("stage", named=True, unique=True)
    hf_config = transformers.AutoConfig.for_model(**config)
    hf_config._attn_implementation = "eager"
    hf_config._experts_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    torch.manual_seed(0)
    prompt = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        cache = model(prompt, use_cache=True).cache
    assert torch_flops(model, prompt, logits_to_keep=1)["Global"] == stages["prefill"]["flops"]
    step = torch_flops(model, prompt[:, :1], cache=cache, logits_to_keep=1)["Global"]
    assert step == stages["decode_first"]["flops"]


def test_ocr2_language_model_matches_torch_counter(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    text = {"hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 50, "n_routed_experts": 4,
            "num_experts_per_tok": 2, "n_shared_experts": 2}  # fmt: skip
    text["mlp_layer_types"] = ["dense", "sparse", "sparse"]
    (tmp_path / "small.json").write_text(json.dumps({"text_config": text}))
    spec = load_model_spec("deepseek-ocr2", config=tmp_path / "small.json")
    stages = analyze(spec, Inputs(text_tokens=5), counters=("analytic",)).stages.rows_by_key(
        "stage", named=True, unique=True
    )
    prompt = stages["prefill"]["flops"] - 2 * 32 * 50  # less the lm_head on the last position
    config = transformers.DeepseekOcr2Config(**spec.config, attn_implementation="eager").text_config
    config._experts_implementation = "eager"
    model = transformers.models.deepseek_ocr2.modeling_deepseek_ocr2.DeepseekOcr2TextModel(config).eval()
    positions = 257 + 5  # base mode: 256 queries + separator, then the text
    assert torch_flops(model, torch.randint(0, 50, (1, positions)))["Global"] == prompt


def test_a_block_without_formula_drops_its_stage_with_a_note():
    spec = load_model_spec("deepseek-ocr")
    formulas = {kind: fn for kind, fn in FLOP_FORMULAS.items() if kind not in ("moe", "clip_layer")}
    result = count_analytic(spec, resolve_shapes(spec, Inputs()), formulas=formulas)
    assert set(result.flops) == {"sam", "projector"}  # no prefill/decode (MoE), no clip, so no vision
    assert "prefill: no FLOP formula for block type(s) moe" in result.notes
    assert "clip: no FLOP formula for block type(s) clip_layer" in result.notes
