"""Closed-form FLOP counts, one small function per block type, in a registry keyed by block type.

Conventions, the same in every formula:

- 2 FLOPs per multiply-accumulate; sizes are ints and so is every result.
- Only matrix products and convolutions count (the work tensor cores do and what
  ``torch.utils.flop_counter`` counts): norms, activations, softmax, residual and bias adds,
  rotary embeddings and position-embedding interpolation are left out.
- Attention scores count the full ``q_len x kv_len`` square (``QK^T`` and ``PV``), as
  ``torch.utils.flop_counter`` counts ``scaled_dot_product_attention`` and as a kernel given an
  explicit mask computes it. A causal flash kernel skips about half of the prefill square.

A caller swaps one formula by name, ``{**FLOP_FORMULAS, "attention_scores": mine}``, without
touching the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable

FLOP_FORMULAS: dict[str, Callable[..., int]] = {}


def flop_formula(block: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register ``fn`` as the FLOP formula of ``block``; a second formula for one block is an error."""

    def register(fn: Callable[..., int]) -> Callable[..., int]:
        if FLOP_FORMULAS.setdefault(block, fn) is not fn:
            raise ValueError(f"two FLOP formulas for block {block!r}")
        return fn

    return register


@flop_formula("linear")
def linear(tokens: int, d_in: int, d_out: int) -> int:
    """``tokens`` rows through a ``d_in -> d_out`` matrix (bias add not counted)."""
    return 2 * tokens * d_in * d_out


@flop_formula("conv2d")
def conv2d(out_height: int, out_width: int, c_in: int, c_out: int, kernel: int) -> int:
    """A dense 2-D convolution: one ``c_in * kernel**2`` dot product per output element."""
    return 2 * out_height * out_width * c_out * c_in * kernel * kernel


@flop_formula("patch_embed")
def patch_embed(height: int, width: int, channels: int, hidden: int, patch: int) -> int:
    """Non-overlapping ``patch x patch`` convolution (stride = kernel) of an image into tokens."""
    return conv2d(height // patch, width // patch, channels, hidden, patch)


@flop_formula("attention_scores")
def attention_scores(q_len: int, kv_len: int, heads: int, head_dim: int, v_head_dim: int | None = None) -> int:
    """``softmax(Q K^T) V`` for one sequence: ``QK^T`` over ``head_dim``, ``PV`` over ``v_head_dim``.

    Linear in ``kv_len``, so the scores of many decode steps are this formula at the summed
    context length.
    """
    return 2 * heads * q_len * kv_len * (head_dim + (head_dim if v_head_dim is None else v_head_dim))


@flop_formula("rel_pos")
def rel_pos(height: int, width: int, heads: int, head_dim: int) -> int:
    """SAM's decomposed relative positions: two einsums of the queries with per-row and per-column
    position tables (``bhwc,hkc->bhwk`` and ``bhwc,wkc->bhwk``)."""
    return 2 * heads * height * width * (height + width) * head_dim


def attention_groups(height: int, width: int, window: int) -> tuple[int, int, int]:
    """(groups, rows, columns) SAM attends over: padded ``window`` squares, or the whole map when 0."""
    if window:
        return math.ceil(height / window) * math.ceil(width / window), window, window
    return 1, height, width


@flop_formula("sam_layer")
def sam_layer(height: int, width: int, window: int, hidden: int, heads: int, mlp: int) -> int:
    """A ViTDet block over a ``height x width`` token map: windowed attention (``window`` > 0) or
    global attention (``window`` = 0), relative positions, then a two-layer MLP.

    Windowed attention runs on the padded map: it is cut into ``ceil(h/w) * ceil(w/w)`` windows of
    ``window**2`` tokens, and qkv, scores and the output projection run on every padded token.
    """
    head_dim = hidden // heads
    groups, rows, cols = attention_groups(height, width, window)
    tokens = rows * cols
    attention = groups * (
        linear(tokens, hidden, 3 * hidden)
        + attention_scores(tokens, tokens, heads, head_dim)
        + rel_pos(rows, cols, heads, head_dim)
        + linear(tokens, hidden, hidden)
    )
    return attention + linear(height * width, hidden, mlp) + linear(height * width, mlp, hidden)


@flop_formula("clip_layer")
def clip_layer(tokens: int, hidden: int, heads: int, intermediate: int) -> int:
    """A pre-norm CLIP encoder layer: fused qkv, scores, output projection, two-layer MLP."""
    return (
        linear(tokens, hidden, 3 * hidden)
        + attention_scores(tokens, tokens, heads, hidden // heads)
        + linear(tokens, hidden, hidden)
        + linear(tokens, hidden, intermediate)
        + linear(tokens, intermediate, hidden)
    )


@flop_formula("gqa_projections")
def gqa_projections(tokens: int, hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """q, k, v and output projections of multi-head / grouped-query attention (MHA: kv_heads = heads)."""
    return linear(tokens, hidden, (heads + 2 * kv_heads) * head_dim) + linear(tokens, heads * head_dim, hidden)


@flop_formula("mla_projections")
def mla_projections(
    tokens: int,
    hidden: int,
    heads: int,
    q_lora_rank: int,
    kv_lora_rank: int,
    qk_nope_head_dim: int,
    qk_rope_head_dim: int,
    v_head_dim: int,
) -> int:
    """Multi-head latent attention's projections of the new tokens: q (direct when ``q_lora_rank``
    is 0, else through the low-rank pair), the compressed kv latent with its rotary key, output."""
    qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
    if q_lora_rank:
        query = linear(tokens, hidden, q_lora_rank) + linear(tokens, q_lora_rank, heads * qk_head_dim)
    else:
        query = linear(tokens, hidden, heads * qk_head_dim)
    latent = linear(tokens, hidden, kv_lora_rank + qk_rope_head_dim)
    return query + latent + linear(tokens, heads * v_head_dim, hidden)


@flop_formula("mla_kv_expand")
def mla_kv_expand(kv_len: int, kv_lora_rank: int, heads: int, qk_nope_head_dim: int, v_head_dim: int) -> int:
    """``kv_b_proj`` over the cached latents: transformers caches the compressed kv and expands
    every cached position into per-head keys and values at each forward."""
    return linear(kv_len, kv_lora_rank, heads * (qk_nope_head_dim + v_head_dim))


@flop_formula("swiglu_mlp")
def swiglu_mlp(tokens: int, hidden: int, intermediate: int) -> int:
    """Gated MLP: gate and up projections, then down (``down(act(gate(x)) * up(x))``)."""
    return 3 * linear(tokens, hidden, intermediate)


@flop_formula("moe")
def moe(tokens: int, hidden: int, intermediate: int, experts: int, top_k: int, shared_intermediate: int) -> int:
    """Mixture of experts: the router, ``top_k`` routed gated MLPs per token, the shared experts.

    Every token runs exactly ``top_k`` experts, so the count does not depend on the routing.
    ``shared_intermediate`` is the summed width of the always-on shared experts (0 for none).
    """
    routed = top_k * swiglu_mlp(tokens, hidden, intermediate)
    return linear(tokens, hidden, experts) + routed + swiglu_mlp(tokens, hidden, shared_intermediate)


@flop_formula("lm_head")
def lm_head(tokens: int, hidden: int, vocab: int) -> int:
    """Logits of ``tokens`` positions (``generate`` keeps only the last prompt position)."""
    return linear(tokens, hidden, vocab)
