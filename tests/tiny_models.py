"""Tiny configs of every model family the torch side builds, for fast CPU tests.

Each keeps every block type of its family (SAM windowed + global layers, dense + MoE decoder
layers, MLA attention) and shrinks only the sizes; the OCR ones are --config overrides merged over
the published presets, so they go through the same loading path as a user's override.
"""

from __future__ import annotations

import json

from stagemfu.models import ModelSpec, load_model_spec

# Tiny versions of each family, merged over the presets with --config semantics. Every block type
# stays (windowed + global SAM layers, dense + MoE LM layers); only the sizes shrink.
TINY_LM = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 1000,
}
# The DeepSeek-MoE language model both OCR presets carry; each names its dense layers its own way.
TINY_OCR_LM = {
    **TINY_LM,
    "moe_intermediate_size": 32,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
}
TINY_OCR1 = {
    "image_token_id": 999,
    "language_config": {**TINY_OCR_LM, "first_k_dense_replace": 1},
    "vision_config": {
        "width": {
            "sam_vit_b": {
                "width": 32,
                "layers": 2,
                "heads": 2,
                "global_attn_indexes": [1],
                "downsample_channels": [24, 48],
            },
            "clip-l-14-224": {"width": 48, "layers": 1, "heads": 2},
        }
    },
    "projector_config": {"input_dim": 96, "n_embed": 64},
}
TINY_OCR2 = {
    "image_token_id": 999,
    "vision_config": {
        "sam_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "global_attn_indexes": [1],
            "output_channels": 16,
            "downsample_channels": [24, 48],
        },
        "encoder_config": {
            "hidden_size": 48,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    },
    "text_config": {**TINY_OCR_LM, "mlp_layer_types": ["dense", "sparse"]},
}
# MoE and MLA sizes shared by DeepSeek-V2 and V3; V3 adds group routing and a low-rank q.
_TINY_DEEPSEEK = {
    "moe_intermediate_size": 32,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
}
TINY_LMS = {
    "llama": {"num_key_value_heads": 2},
    "mistral": {"num_key_value_heads": 2},
    "qwen2": {"num_key_value_heads": 2},
    "qwen3": {"num_key_value_heads": 2, "head_dim": 24},  # head_dim need not be hidden / heads
    # layer 0 dense (mlp_only_layers), layer 1 sparse with a gated shared expert
    "qwen2_moe": {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48, "mlp_only_layers": [0]},
    # decoder_sparse_step 2: layer 0 dense, layer 1 sparse
    "qwen3_moe": {"num_key_value_heads": 2, "head_dim": 24, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "decoder_sparse_step": 2},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "num_key_value_heads": 2},
    "deepseek_v2": {**_TINY_DEEPSEEK, "q_lora_rank": None},
    "deepseek_v3": {**_TINY_DEEPSEEK, "n_group": 2, "topk_group": 1, "q_lora_rank": 24},
}  # fmt: skip


def tiny_spec(tmp_path, model: str, **overrides) -> ModelSpec:
    """A preset shrunk by a --config override file, or a tiny decoder-LM config.json."""
    if model in ("deepseek-ocr", "deepseek-ocr2"):
        override = tmp_path / f"{model}-tiny.json"
        override.write_text(json.dumps(TINY_OCR1 if model == "deepseek-ocr" else TINY_OCR2), encoding="utf-8")
        return load_model_spec(model, config=override)
    config = {"model_type": model, **TINY_LM, **TINY_LMS[model], **overrides}
    path = tmp_path / model / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config), encoding="utf-8")
    return load_model_spec(str(path.parent))
