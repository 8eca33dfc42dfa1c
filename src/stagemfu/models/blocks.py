"""Models as data: the blocks each stage runs, with their sizes for one input shape.

A :class:`Block` names a formula (``stagemfu.analyzer.formulas.FLOP_FORMULAS``), the integer
sizes it takes and how many identical copies run (layers x views x sequences). The analytic count
of a stage is the sum over its blocks; the byte estimate reads the same blocks. Nothing here knows
a FLOP formula and no formula knows a model.

The builders here are generic: :func:`lm_blocks` for any decoder described by
:class:`~stagemfu.models.dims.LmDims` (grouped-query or latent attention, dense or MoE MLPs), and
:func:`sam_blocks` / :func:`clip_blocks` for the vision towers families compose. A family's
``vision_blocks`` puts them together; :func:`model_blocks` adds the language model.

Vision stages run over the global view and every local crop of every sample; ``prefill`` is the
language model alone over the prompt; decode step t feeds one token per sequence and attends over
``prompt_tokens + t`` positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stagemfu.models.dims import ClipDims, LmDims, SamDims

if TYPE_CHECKING:
    from stagemfu.models.presets import ModelSpec
    from stagemfu.models.shapes import Shapes

LM_STAGES = ("prefill", "decode", "decode_first", "decode_last")  # every other stage is part of vision


@dataclass(frozen=True)
class Block:
    """``repeat`` identical copies of one formula's work inside ``stage``."""

    stage: str
    name: str
    kind: str
    sizes: dict[str, int]
    repeat: int = 1


@dataclass(frozen=True)
class LmPass:
    """One language-model stage: ``passes`` forwards of ``tokens`` new positions per sequence over
    ``context`` positions (summed over the passes), ``logits`` positions through the head, and
    ``cached`` positions per sequence in the KV cache when the stage ends."""

    stage: str
    tokens: int
    context: int
    passes: int
    logits: int
    cached: int


def model_blocks(spec: ModelSpec, shapes: Shapes) -> tuple[Block, ...]:
    """Every block of every stage the model runs for ``shapes``.

    Returns
    -------
    tuple of Block
        The family's vision stages over every view (image models), then ``prefill``,
        ``decode_first``, ``decode_last`` and ``decode`` (all steps); the decode stages are absent
        when only one token is generated.
    """
    vision: list[Block] = []
    if spec.dims.vision is not None:
        for side, count in views(shapes):
            vision += spec.family.vision_blocks(spec.dims, side, count * shapes.inputs.batch)
    return (*vision, *lm_blocks(spec.dims.lm, shapes))


def vision_parts(blocks: tuple[Block, ...] | list[Block]) -> list[str]:
    """The vision stages among ``blocks``, in order: every stage that is not the language model's."""
    return list(dict.fromkeys(b.stage for b in blocks if b.stage not in LM_STAGES))


def views(shapes: Shapes) -> list[tuple[int, int]]:
    """(side in pixels, views per sample): the global view and the local crops."""
    views = [(shapes.base_size, 1)]
    if shapes.crops:
        views.append((shapes.local_size or 0, shapes.crops))
    return views


def lm_passes(shapes: Shapes) -> list[LmPass]:
    """Prefill and the decode stages; decode's context is the sum over its steps (attention is
    linear in the context length, so the summed count is exact)."""
    prompt, steps = shapes.prompt_tokens, shapes.inputs.new_tokens - 1
    prefill_logits = prompt if shapes.inputs.full_logits else 1
    passes = [LmPass("prefill", prompt, prompt, 1, prefill_logits, prompt)]
    if steps:
        passes += [
            LmPass("decode_first", 1, prompt + 1, 1, 1, prompt + 1),
            LmPass("decode_last", 1, prompt + steps, 1, 1, prompt + steps),
            LmPass("decode", 1, steps * prompt + steps * (steps + 1) // 2, steps, 1, prompt + steps),
        ]
    return passes


def lm_blocks(lm: LmDims, shapes: Shapes) -> list[Block]:
    """The decoder's blocks for every language-model pass of ``shapes``: attention projections
    (grouped-query or latent), attention over the context (MLA also expands the cached latents),
    dense and MoE MLPs, and the head."""
    batch = shapes.inputs.batch
    blocks = []
    for p in lm_passes(shapes):
        tokens = batch * p.tokens * p.passes  # positions through every per-token matrix
        sequence_layers = batch * lm.layers  # one copy per sequence and layer
        blocks += _attention(lm, p, tokens, sequence_layers)
        if lm.dense_layers:
            sizes = dict(tokens=tokens, hidden=lm.hidden, intermediate=lm.intermediate)
            blocks.append(Block(p.stage, "dense mlp", "swiglu_mlp", sizes, lm.dense_layers))
        if lm.moe is not None and lm.moe_layers:
            m = lm.moe
            sizes = dict(tokens=tokens, hidden=lm.hidden, intermediate=m.intermediate, experts=m.experts,
                         top_k=m.top_k, shared_intermediate=m.shared_intermediate)  # fmt: skip
            blocks.append(Block(p.stage, "moe (router + top-k experts + shared)", "moe", sizes, lm.moe_layers))
            if m.shared_gate:
                gate = dict(tokens=tokens, d_in=lm.hidden, d_out=1)
                blocks.append(Block(p.stage, "shared expert gate", "linear", gate, lm.moe_layers))
        head = dict(tokens=batch * p.logits * p.passes, hidden=lm.hidden, vocab=lm.vocab)
        blocks.append(Block(p.stage, "lm_head", "lm_head", head))
    return blocks


def _attention(lm: LmDims, p: LmPass, tokens: int, sequence_layers: int) -> list[Block]:
    if lm.mla is None:
        projections = dict(tokens=tokens, hidden=lm.hidden, heads=lm.heads, kv_heads=lm.kv_heads, head_dim=lm.head_dim)
        scores = dict(q_len=p.tokens, kv_len=p.context, heads=lm.heads, head_dim=lm.head_dim)
        return [
            Block(p.stage, "attention projections", "gqa_projections", projections, lm.layers),
            Block(p.stage, "attention scores", "attention_scores", scores, sequence_layers),
        ]
    m = lm.mla
    projections = dict(tokens=tokens, hidden=lm.hidden, heads=lm.heads, q_lora_rank=m.q_lora_rank,
                       kv_lora_rank=m.kv_lora_rank, qk_nope_head_dim=m.qk_nope_head_dim,
                       qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim)  # fmt: skip
    expand = dict(kv_len=p.context, heads=lm.heads, kv_lora_rank=m.kv_lora_rank,
                  qk_nope_head_dim=m.qk_nope_head_dim, v_head_dim=m.v_head_dim)  # fmt: skip
    scores = dict(q_len=p.tokens, kv_len=p.context, heads=lm.heads, head_dim=m.qk_head_dim, v_head_dim=m.v_head_dim)
    return [
        Block(p.stage, "attention projections (MLA)", "mla_projections", projections, lm.layers),
        Block(p.stage, "kv_b_proj over the cached latents", "mla_kv_expand", expand, sequence_layers),
        Block(p.stage, "attention scores", "attention_scores", scores, sequence_layers),
    ]


def sam_blocks(sam: SamDims, side: int, views: int) -> list[Block]:
    """SAM over ``views`` images of ``side`` pixels: patch embedding, windowed and global layers,
    neck and the stride-2 convolutions."""
    grid = side // sam.patch
    layer = {"height": grid, "width": grid, "hidden": sam.hidden, "heads": sam.heads, "mlp": sam.mlp}
    embed = dict(height=side, width=side, channels=sam.channels, hidden=sam.hidden, patch=sam.patch)
    windowed = sam.layers - sam.global_layers
    blocks = [
        Block("sam", "patch_embed", "patch_embed", embed, views),
        Block("sam", "windowed layers", "sam_layer", {**layer, "window": sam.window}, views * windowed),
        Block("sam", "global layers", "sam_layer", {**layer, "window": 0}, views * sam.global_layers),
        _conv("neck conv 1x1", grid, sam.hidden, sam.neck, 1, views),
        _conv("neck conv 3x3", grid, sam.neck, sam.neck, 3, views),
    ]
    channels = (sam.neck, *sam.downsample)
    for index, (c_in, c_out) in enumerate(zip(channels, sam.downsample)):
        grid = math.ceil(grid / 2)  # 3x3, stride 2, padding 1
        blocks.append(_conv(f"downsample conv {index + 1}", grid, c_in, c_out, 3, views))
    return blocks


def _conv(name: str, grid: int, c_in: int, c_out: int, kernel: int, views: int) -> Block:
    sizes = dict(out_height=grid, out_width=grid, c_in=c_in, c_out=c_out, kernel=kernel)
    return Block("sam", name, "conv2d", sizes, views)


def sam_tokens(sam: SamDims, side: int) -> int:
    """Feature-map positions SAM hands on for a view of ``side`` pixels."""
    grid = side // sam.patch
    for _ in sam.downsample:
        grid = math.ceil(grid / 2)
    return grid * grid


def clip_blocks(clip: ClipDims, tokens: int, views: int) -> list[Block]:
    """CLIP's encoder layers over ``tokens`` positions of each of ``views`` views."""
    layer = dict(tokens=tokens, hidden=clip.hidden, heads=clip.heads, intermediate=clip.intermediate)
    return [Block("clip", "layers", "clip_layer", layer, views * clip.layers)]
