"""Parameters and bytes per stage: the numerator of memory-bandwidth utilisation (MBU).

``params`` counts the parameters of the modules a stage runs. ``bytes`` is an estimate of the
DRAM traffic of one generation's stage, at the run's dtype, made of three terms:

- weights read once per forward pass (a vision stage runs one pass for the global views and one
  for the local crops); an MoE layer reads only the experts its tokens reach, the expected number
  of distinct experts under uniform routing, ``E * (1 - (1 - k/E) ** tokens)``; the embedding table
  only for the rows looked up;
- the KV cache: each pass reads its whole context and writes its new positions (transformers
  caches K and V per head for multi-head / grouped-query attention and the compressed latent for
  MLA; :func:`kv_bytes_per_position`);
- activations: every matrix product reads its input and writes its output once (no fusion);
  attention reads Q, K, V and writes O, with K and V of the language model counted in the cache.
"""

from __future__ import annotations

from collections.abc import Callable

from stagemfu.analyzer.formulas import attention_groups
from stagemfu.models.blocks import LM_STAGES, Block, lm_passes, model_blocks, views, vision_parts
from stagemfu.models.dims import LmDims
from stagemfu.models.params import lm_params
from stagemfu.models.presets import ModelSpec
from stagemfu.models.shapes import DTYPE_BYTES, Shapes

KV_COLUMNS = ("kv_read_bytes", "kv_write_bytes", "kv_bytes")  # read, written, held after the stage

BYTES_NOTE = (
    "bytes are estimates: weights read once per forward pass (MoE: expected distinct experts under uniform "
    "routing), KV cache read over the context and written for new positions, activations read and written "
    "once per matrix product"
)

# Elements each block reads and writes besides its weights (activations), keyed like FLOP_FORMULAS.
ACTIVATION_IO: dict[str, Callable[..., int]] = {}


def _io(block: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    def register(fn: Callable[..., int]) -> Callable[..., int]:
        ACTIVATION_IO[block] = fn
        return fn

    return register


@_io("linear")
def linear_io(tokens: int, d_in: int, d_out: int) -> int:
    return tokens * (d_in + d_out)


@_io("lm_head")
def lm_head_io(tokens: int, hidden: int, vocab: int) -> int:
    return linear_io(tokens, hidden, vocab)


@_io("conv2d")
def conv2d_io(out_height: int, out_width: int, c_in: int, c_out: int, kernel: int) -> int:
    return out_height * out_width * (c_in + c_out)  # input taken at the output's resolution


@_io("patch_embed")
def patch_embed_io(height: int, width: int, channels: int, hidden: int, patch: int) -> int:
    return height * width * channels + (height // patch) * (width // patch) * hidden


@_io("attention_scores")
def attention_io(q_len: int, kv_len: int, heads: int, head_dim: int, v_head_dim: int | None = None) -> int:
    width = heads * (head_dim + (head_dim if v_head_dim is None else v_head_dim))
    return (q_len + kv_len) * width


@_io("sam_layer")
def sam_layer_io(height: int, width: int, window: int, hidden: int, heads: int, mlp: int) -> int:
    groups, rows, cols = attention_groups(height, width, window)
    padded = groups * rows * cols
    attention = linear_io(padded, hidden, 3 * hidden) + 4 * padded * hidden + linear_io(padded, hidden, hidden)
    return attention + linear_io(height * width, hidden, mlp) + linear_io(height * width, mlp, hidden)


@_io("clip_layer")
def clip_layer_io(tokens: int, hidden: int, heads: int, intermediate: int) -> int:
    attention = linear_io(tokens, hidden, 3 * hidden) + 4 * tokens * hidden + linear_io(tokens, hidden, hidden)
    return attention + linear_io(tokens, hidden, intermediate) + linear_io(tokens, intermediate, hidden)


@_io("gqa_projections")
def gqa_io(tokens: int, hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    return linear_io(tokens, hidden, (heads + 2 * kv_heads) * head_dim) + linear_io(tokens, heads * head_dim, hidden)


@_io("mla_projections")
def mla_io(
    tokens: int,
    hidden: int,
    heads: int,
    q_lora_rank: int,
    kv_lora_rank: int,
    qk_nope_head_dim: int,
    qk_rope_head_dim: int,
    v_head_dim: int,
) -> int:
    query = tokens * (hidden + 2 * q_lora_rank + heads * (qk_nope_head_dim + qk_rope_head_dim))
    return (
        query
        + linear_io(tokens, hidden, kv_lora_rank + qk_rope_head_dim)
        + linear_io(tokens, heads * v_head_dim, hidden)
    )


@_io("mla_kv_expand")
def mla_kv_expand_io(kv_len: int, kv_lora_rank: int, heads: int, qk_nope_head_dim: int, v_head_dim: int) -> int:
    return linear_io(kv_len, kv_lora_rank, heads * (qk_nope_head_dim + v_head_dim))


@_io("swiglu_mlp")
def swiglu_io(tokens: int, hidden: int, intermediate: int) -> int:
    return 2 * linear_io(tokens, hidden, intermediate) + linear_io(tokens, intermediate, hidden)


@_io("moe")
def moe_io(tokens: int, hidden: int, intermediate: int, experts: int, top_k: int, shared_intermediate: int) -> int:
    shared = swiglu_io(tokens, hidden, shared_intermediate) if shared_intermediate else 0
    return linear_io(tokens, hidden, experts) + top_k * swiglu_io(tokens, hidden, intermediate) + shared


def expected_experts(experts: int, top_k: int, tokens: int) -> float:
    """Distinct experts ``tokens`` reach when each picks ``top_k`` of ``experts`` uniformly."""
    return experts * (1 - (1 - top_k / experts) ** tokens)


def stage_params(spec: ModelSpec) -> dict[str, int]:
    """Parameters of the modules each stage runs (all experts of an MoE layer).

    Returns
    -------
    dict
        Stage -> parameter count for the vision stages and their sum ``vision`` (image models) and
        the language-model stages (all equal to the language model's count, embeddings and head
        included).
    """
    params = dict.fromkeys(LM_STAGES, lm_params(spec.dims.lm).total)
    vision = spec.family.vision_params(spec.dims)
    return {"vision": sum(vision.values()), **vision, **params} if vision else params


def model_params(spec: ModelSpec) -> int:
    """All parameters of the model (the stages' plus any the forward never reads)."""
    vision = spec.family.vision_params(spec.dims)
    return lm_params(spec.dims.lm).total + sum(vision.values()) + spec.family.unused_params(spec.dims)


def kv_bytes_per_position(lm: LmDims, dtype: str) -> int:
    """Bytes the KV cache holds for one position of one sequence, over all layers.

    Multi-head and grouped-query attention cache K and V of every key/value head:
    ``2 x layers x kv_heads x head_dim x bytes`` (Ainslie et al. 2023, GQA, arXiv:2305.13245; Pope et
    al. 2022, arXiv:2211.05102). Multi-head latent attention caches the compressed latent and the
    rotary key shared by the heads: ``layers x (kv_lora_rank + qk_rope_head_dim) x bytes``
    (DeepSeek-V2, arXiv:2405.04434, section 2.1 and table 1), which is what transformers'
    DeepSeek-V2/V3 attention passes to its cache.
    """
    return lm.layers * lm.kv_values_per_token * DTYPE_BYTES[dtype]


def stage_kv_bytes(spec: ModelSpec, shapes: Shapes) -> dict[str, dict[str, int]]:
    """KV-cache bytes per language-model stage, all sequences of the batch.

    Returns
    -------
    dict
        Stage -> ``kv_read_bytes`` (the context each pass attends over, summed over the passes),
        ``kv_write_bytes`` (the positions the stage adds) and ``kv_bytes`` (what the cache holds
        when the stage ends). Vision stages have no cache and are absent.
    """
    per_position = shapes.inputs.batch * kv_bytes_per_position(spec.dims.lm, shapes.inputs.dtype)
    return {
        p.stage: dict(zip(KV_COLUMNS, (per_position * n for n in (p.context, p.tokens * p.passes, p.cached))))
        for p in lm_passes(shapes)
    }


def stage_bytes(spec: ModelSpec, shapes: Shapes) -> dict[str, int]:
    """Estimated bytes moved per stage (see the module docstring for what is counted)."""
    size = DTYPE_BYTES[shapes.inputs.dtype]
    blocks = model_blocks(spec, shapes)
    activations: dict[str, int] = {}
    for block in blocks:
        activations[block.stage] = activations.get(block.stage, 0) + block.repeat * _block_io(block)
    traffic = {stage: size * elements for stage, elements in activations.items()}
    parts = vision_parts(blocks)
    if parts:
        passes, params = len(views(shapes)), spec.family.vision_params(spec.dims)
        for part in parts:
            traffic[part] += size * params.get(part, 0) * passes
        traffic = {"vision": sum(traffic[p] for p in parts), **traffic}
    lm = spec.dims.lm
    weights = lm_params(lm)
    batch = shapes.inputs.batch
    kv = stage_kv_bytes(spec, shapes)
    for p in lm_passes(shapes):
        tokens = batch * p.tokens  # per forward pass
        read = weights.dense_part + tokens * lm.hidden  # embedding rows looked up
        if lm.moe is not None and lm.moe_layers:
            hit = expected_experts(lm.moe.experts, lm.moe.top_k, tokens)
            read += round(lm.moe_layers * (weights.moe_fixed + hit * weights.expert))
        traffic[p.stage] += size * read * p.passes + kv[p.stage]["kv_read_bytes"] + kv[p.stage]["kv_write_bytes"]
    return traffic


def _block_io(block: Block) -> int:
    sizes = block.sizes
    if block.kind == "attention_scores" and block.stage in LM_STAGES:  # K and V are the KV cache's
        return attention_io(sizes["q_len"], 0, sizes["heads"], sizes["head_dim"], sizes.get("v_head_dim"))
    return ACTIVATION_IO[block.kind](**sizes)
