"""Parameter counts of the generic blocks, from the checked sizes alone (no torch).

Each count is the number of values the module holds, as transformers builds it (weights, biases,
norm scales, position tables), and is tested against ``sum(p.numel())`` of the built model.
:func:`lm_params` splits the language model the way the byte estimate reads it: what every pass
reads, what each MoE layer always reads, and one routed expert.
"""

from __future__ import annotations

from dataclasses import dataclass

from stagemfu.models.dims import ClipDims, LmDims, SamDims


@dataclass(frozen=True)
class LmParams:
    """The language model's parameters, split as the byte estimate needs them.

    ``dense_part``: attention, norms, dense MLPs, final norm and head of every layer (read by every
    pass); ``moe_fixed``: one MoE layer's router, shared experts and gate; ``expert``: one routed
    expert; ``embedding``: the input table (a pass reads only the rows it looks up).
    """

    dense_part: int
    moe_fixed: int
    expert: int
    embedding: int
    total: int


def lm_params(lm: LmDims) -> LmParams:
    """Every parameter of a decoder described by ``lm``."""
    h = lm.hidden
    per_layer = _attention_params(lm) + 2 * h  # two RMSNorms
    dense_mlp = _mlp_params(h, lm.intermediate, lm.mlp_bias)
    moe = lm.moe
    expert = 3 * h * moe.intermediate if moe else 0
    moe_fixed = 0
    if moe:
        shared = _mlp_params(h, moe.shared_intermediate, lm.mlp_bias) if moe.shared_intermediate else 0
        moe_fixed = h * moe.experts + shared + h * moe.shared_gate  # router, shared experts, their gate
    head = 0 if lm.tied_embeddings else lm.vocab * h
    dense_part = lm.layers * per_layer + lm.dense_layers * dense_mlp + h + head  # + final norm
    embedding = lm.vocab * h
    total = dense_part + embedding + lm.moe_layers * (moe_fixed + (moe.experts * expert if moe else 0))
    return LmParams(dense_part, moe_fixed, expert, embedding, total)


def _mlp_params(hidden: int, intermediate: int, bias: bool) -> int:
    """A gated MLP: gate and up (hidden -> intermediate), down (intermediate -> hidden)."""
    return 3 * hidden * intermediate + bias * (2 * intermediate + hidden)


def _attention_params(lm: LmDims) -> int:
    h = lm.hidden
    if lm.mla is None:
        qkv = (lm.heads + 2 * lm.kv_heads) * lm.head_dim
        out = lm.heads * lm.head_dim
        return h * qkv + lm.qkv_bias * qkv + out * h + lm.o_bias * h + lm.qk_norm * 2 * lm.head_dim
    m = lm.mla
    if m.q_lora_rank:  # q_a_proj (+ bias), its norm, q_b_proj
        query = (
            h * m.q_lora_rank + lm.qkv_bias * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * lm.heads * m.qk_head_dim
        )
    else:
        query = h * lm.heads * m.qk_head_dim
    latent = m.kv_lora_rank + m.qk_rope_head_dim
    kv = h * latent + lm.qkv_bias * latent + m.kv_lora_rank  # kv_a_proj_with_mqa (+ bias), its norm
    kv += m.kv_lora_rank * lm.heads * (m.qk_nope_head_dim + m.v_head_dim)  # kv_b_proj
    return query + kv + lm.heads * m.v_head_dim * h + lm.o_bias * h


def sam_params(sam: SamDims) -> int:
    """SAM ViT-B with its neck and stride-2 convolutions (biases on qkv and every linear)."""
    grid, head_dim, h = sam.image_size // sam.patch, sam.hidden // sam.heads, sam.hidden
    layer = 3 * h * h + 3 * h + h * h + h + 4 * h + h * sam.mlp + sam.mlp + sam.mlp * h + h  # qkv, proj, 2 LN, mlp
    windowed = 2 * (2 * sam.window - 1) * head_dim  # relative-position tables (rows and columns)
    global_ = 2 * (2 * grid - 1) * head_dim
    layers = sam.layers * layer + (sam.layers - sam.global_layers) * windowed + sam.global_layers * global_
    embed = sam.channels * sam.patch**2 * h + h + grid * grid * h  # patch conv + bias, absolute positions
    neck = h * sam.neck + 2 * sam.neck + 9 * sam.neck * sam.neck + 2 * sam.neck  # conv 1x1, LN, conv 3x3, LN
    downsample = sum(9 * c_in * c_out for c_in, c_out in zip((sam.neck, *sam.downsample), sam.downsample))
    return embed + layers + neck + downsample


def clip_params(clip: ClipDims) -> int:
    """CLIP's encoder over SAM's features: class token, positions, pre-norm and its layers (the
    patch convolution, held but never run, is :func:`clip_patch_params`)."""
    h, grid, inter = clip.hidden, clip.image_size // clip.patch, clip.intermediate
    layer = 3 * h * h + 3 * h + h * h + h + 4 * h + h * inter + inter + inter * h + h
    return h + (grid * grid + 1) * h + 2 * h + clip.layers * layer


def clip_patch_params(clip: ClipDims) -> int:
    """CLIP's own patch convolution: in the checkpoint, never run on SAM's features."""
    return clip.hidden * 3 * clip.patch**2
