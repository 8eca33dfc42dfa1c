"""Parameters and bytes per stage: the numerator of memory-bandwidth utilisation (MBU).

``params`` counts the parameters of the modules a stage runs. ``bytes`` is an estimate of the
DRAM traffic of one generation's stage, at the run's dtype, made of three terms:

- weights read once per forward pass (a vision stage runs one pass for the global views and one
  for the local crops); an MoE layer reads only the experts its tokens reach, the expected number
  of distinct experts under uniform routing, ``E * (1 - (1 - k/E) ** tokens)``; the embedding table
  only for the rows looked up;
- the KV cache: each pass reads its whole context and writes its new positions (transformers
  caches K and V per head for multi-head / grouped-query attention and the compressed latent for
  MLA);
- activations: every matrix product reads its input and writes its output once (no fusion);
  attention reads Q, K, V and writes O, with K and V of the language model counted in the cache.
"""

from __future__ import annotations

from collections.abc import Callable

from stagemfu.analyzer.blocks import (
    LM_STAGES,
    V2_QUERIES,
    VISION_PARTS,
    Block,
    LmDims,
    SamDims,
    lm_dims,
    lm_passes,
    model_blocks,
    sam_dims,
    views,
)
from stagemfu.analyzer.formulas import attention_groups
from stagemfu.models.presets import DEEPSEEK_OCR_FIXED, ModelSpec, config_value
from stagemfu.models.shapes import DTYPE_BYTES, Shapes

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
        Stage -> parameter count for ``sam``, ``clip``/``encoder``, ``projector``, ``vision`` and the
        language-model stages (all equal to the language model's count, embeddings and head included).
    """
    lm = lm_params(lm_dims(spec))
    params = dict.fromkeys(LM_STAGES, lm["total"])
    if spec.family == "decoder-lm":
        return params
    vision = {"sam": _sam_params(spec, sam_dims(spec))}
    if spec.family == "deepseek-ocr":
        vision["clip"] = _clip_params(spec)
        d_in = config_value(spec.config, "projector_config.input_dim", spec.source)
        d_out = config_value(spec.config, "projector_config.n_embed", spec.source)
        vision["projector"] = d_in * d_out + d_out + 2 * d_out  # linear, image_newline, view_separator
    else:
        vision["encoder"] = _encoder_params(spec)
        d_in = config_value(spec.config, "vision_config.encoder_config.hidden_size", spec.source)
        d_out = lm_dims(spec).hidden
        vision["projector"] = d_in * d_out + d_out + d_out  # linear, view_separator
    return {"vision": sum(vision.values()), **vision, **params}


def model_params(spec: ModelSpec) -> int:
    """All parameters of the model (the stages' plus any the forward never reads)."""
    params = stage_params(spec)
    unused = 0
    if spec.family == "deepseek-ocr":  # CLIP's own patch convolution: in the checkpoint, never run
        clip = config_value(spec.config, "vision_config.width.clip-l-14-224", spec.source)
        unused = clip["width"] * 3 * clip["patch_size"] ** 2
    return params["prefill"] + sum(params.get(part, 0) for part in VISION_PARTS) + unused


def stage_bytes(spec: ModelSpec, shapes: Shapes) -> dict[str, int]:
    """Estimated bytes moved per stage (see the module docstring for what is counted)."""
    size = DTYPE_BYTES[shapes.inputs.dtype]
    activations: dict[str, int] = {}
    for block in model_blocks(spec, shapes):
        activations[block.stage] = activations.get(block.stage, 0) + block.repeat * _block_io(block)
    traffic = {stage: size * elements for stage, elements in activations.items()}
    params = stage_params(spec)
    passes = len(views(shapes)) if spec.family != "decoder-lm" else 0
    for part in VISION_PARTS:
        if part in params and part in traffic:
            traffic[part] += size * params[part] * passes
    if spec.family != "decoder-lm":
        traffic["vision"] = sum(traffic[p] for p in VISION_PARTS if p in traffic)
    lm = lm_dims(spec)
    weights = lm_params(lm)
    batch = shapes.inputs.batch
    for p in lm_passes(shapes):
        tokens = batch * p.tokens  # per forward pass
        read = weights["dense_part"] + batch * p.tokens * lm.hidden  # embedding rows looked up
        if lm.moe_layers:
            hit = expected_experts(lm.moe["experts"], lm.moe["top_k"], tokens)
            read += round(lm.moe_layers * (weights["moe_fixed"] + hit * weights["expert"]))
        kv = batch * lm.layers * _kv_per_position(lm) * (p.context + p.tokens * p.passes)
        traffic[p.stage] += size * (read * p.passes + kv)
    return traffic


def _block_io(block: Block) -> int:
    sizes = block.sizes
    if block.kind == "attention_scores" and block.stage in LM_STAGES:  # K and V are the KV cache's
        return attention_io(sizes["q_len"], 0, sizes["heads"], sizes["head_dim"], sizes.get("v_head_dim"))
    return ACTIVATION_IO[block.kind](**sizes)


def _kv_per_position(lm: LmDims) -> int:
    if lm.attention == "mla":
        return lm.mla["kv_lora_rank"] + lm.mla["qk_rope_head_dim"]
    return 2 * lm.kv_heads * lm.head_dim


def lm_params(lm: LmDims) -> dict[str, int]:
    """The decoder's parameters, split as the byte estimate needs them."""
    h = lm.hidden
    if lm.attention == "mla":
        m = lm.mla
        qk = m["qk_nope_head_dim"] + m["qk_rope_head_dim"]
        q = (
            (h * m["q_lora_rank"] + m["q_lora_rank"] + m["q_lora_rank"] * lm.heads * qk)
            if m["q_lora_rank"]
            else h * lm.heads * qk
        )
        kv = h * (m["kv_lora_rank"] + m["qk_rope_head_dim"]) + m["kv_lora_rank"]
        kv += m["kv_lora_rank"] * lm.heads * (m["qk_nope_head_dim"] + m["v_head_dim"])
        attention = q + kv + lm.heads * m["v_head_dim"] * h
    else:
        qkv = (lm.heads + 2 * lm.kv_heads) * lm.head_dim
        attention = h * qkv + lm.qkv_bias * qkv + lm.heads * lm.head_dim * h
    per_layer = attention + 2 * h  # two RMSNorms
    dense_mlp = 3 * h * lm.intermediate
    expert = 3 * h * lm.moe.get("intermediate", 0)
    moe_fixed = h * lm.moe.get("experts", 0) + 3 * h * lm.moe.get("shared_intermediate", 0)
    head = 0 if lm.tied_embeddings else lm.vocab * h
    dense_part = lm.layers * per_layer + lm.dense_layers * dense_mlp + h + head  # + final norm, head
    total = dense_part + lm.vocab * h + lm.moe_layers * (moe_fixed + lm.moe.get("experts", 0) * expert)
    return {"total": total, "dense_part": dense_part, "moe_fixed": moe_fixed, "expert": expert}


def _sam_params(spec: ModelSpec, sam: SamDims) -> int:
    if spec.family == "deepseek-ocr2":
        image = config_value(spec.config, "vision_config.sam_config.image_size", spec.source)
    else:
        image = config_value(spec.config, "vision_config.image_size", spec.source)
    grid, head_dim, h = image // sam.patch, sam.hidden // sam.heads, sam.hidden
    layer = 3 * h * h + 3 * h + h * h + h + 4 * h + h * sam.mlp + sam.mlp + sam.mlp * h + h  # qkv, proj, 2 LN, mlp
    windowed = 2 * (2 * sam.window - 1) * head_dim  # relative-position tables (rows and columns)
    global_ = 2 * (2 * grid - 1) * head_dim
    layers = sam.layers * layer + (sam.layers - sam.global_layers) * windowed + sam.global_layers * global_
    embed = sam.channels * sam.patch**2 * h + h + grid * grid * h  # patch conv + bias, absolute positions
    neck = h * sam.neck + 2 * sam.neck + 9 * sam.neck * sam.neck + 2 * sam.neck  # conv 1x1, LN, conv 3x3, LN
    downsample = sum(9 * c_in * c_out for c_in, c_out in zip((sam.neck, *sam.downsample), sam.downsample))
    return embed + layers + neck + downsample


def _clip_params(spec: ModelSpec) -> int:
    clip = config_value(spec.config, "vision_config.width.clip-l-14-224", spec.source)
    h, grid = clip["width"], clip["image_size"] // clip["patch_size"]
    inter = DEEPSEEK_OCR_FIXED["clip_mlp_ratio"] * h
    layer = 3 * h * h + 3 * h + h * h + h + 4 * h + h * inter + inter + inter * h + h
    return h + (grid * grid + 1) * h + 2 * h + clip["layers"] * layer  # class token, positions, pre-norm


def _encoder_params(spec: ModelSpec) -> int:
    key = "vision_config.encoder_config."
    h = config_value(spec.config, key + "hidden_size", spec.source)
    heads = config_value(spec.config, key + "num_attention_heads", spec.source)
    kv_heads = config_value(spec.config, key + "num_key_value_heads", spec.source)
    inter = config_value(spec.config, key + "intermediate_size", spec.source)
    layers = config_value(spec.config, key + "num_hidden_layers", spec.source)
    head_dim = h // heads
    qkv = h * (heads + 2 * kv_heads) * head_dim + (heads + 2 * kv_heads) * head_dim  # with bias
    layer = qkv + heads * head_dim * h + 2 * h + 3 * h * inter
    queries = sum(count for _, count in V2_QUERIES)  # both learnt query tables
    return layers * layer + h + queries * h
