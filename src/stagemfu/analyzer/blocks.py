"""Each model as data: the blocks every stage runs, with their sizes for one input shape.

A :class:`Block` names a formula (``formulas.FLOP_FORMULAS``), the integer sizes it takes and how
many identical copies run (layers x views x sequences). The analytic count of a stage is the sum
over its blocks; ``memory.py`` reads the same dimensions for parameters and bytes. Nothing here
knows a FLOP formula and nothing in ``formulas.py`` knows a model.

Vision stages run over the global view and every local crop of every sample; ``prefill`` is the
language model alone over the prompt; decode step t feeds one token per sequence and attends over
``prompt_tokens + t`` positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stagemfu.errors import ModelConfigError
from stagemfu.models.presets import DEEPSEEK_OCR_FIXED as FIXED
from stagemfu.models.presets import ModelSpec, config_value
from stagemfu.models.shapes import Shapes

VISION_PARTS = ("sam", "clip", "encoder", "projector")  # vision = the sum of those a model has
LM_STAGES = ("prefill", "decode", "decode_first", "decode_last")

# DeepSeek-OCR-2's learnt encoder queries (modeling_deepseek_ocr2.py: query_768_resolution with 144
# rows for maps of at most 144 patches, query_1024_resolution with 256 rows otherwise).
V2_QUERIES = ((144, 144), (math.inf, 256))


@dataclass(frozen=True)
class Block:
    """``repeat`` identical copies of one formula's work inside ``stage``."""

    stage: str
    name: str
    kind: str
    sizes: dict[str, int]
    repeat: int = 1


@dataclass(frozen=True)
class SamDims:
    hidden: int
    layers: int
    heads: int
    global_layers: int
    mlp: int
    patch: int
    window: int
    neck: int
    downsample: tuple[int, ...]
    channels: int = 3


@dataclass(frozen=True)
class LmDims:
    """A decoder's sizes in one vocabulary, whatever config format they came from.

    ``attention`` is ``gqa`` (MHA when ``kv_heads == heads``) or ``mla``; ``dense_layers`` and
    ``moe_layers`` split ``layers`` by MLP type.
    """

    hidden: int
    vocab: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    dense_layers: int
    attention: str = "gqa"
    mla: dict[str, int] = field(default_factory=dict)
    moe: dict[str, int] = field(default_factory=dict)
    tied_embeddings: bool = False
    qkv_bias: bool = False

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers


def model_blocks(spec: ModelSpec, shapes: Shapes) -> tuple[Block, ...]:
    """Every block of every stage the model runs for ``shapes``.

    Returns
    -------
    tuple of Block
        Stages ``sam``, ``clip`` (DeepSeek-OCR) or ``encoder`` (DeepSeek-OCR-2), ``projector``,
        ``prefill``, ``decode_first``, ``decode_last`` and ``decode`` (all steps); the decode stages
        are absent when only one token is generated.
    """
    vision: list[Block] = []
    if spec.family != "decoder-lm":
        for side, count in views(shapes):
            vision += _vision_blocks(spec, side, count * shapes.inputs.batch)
    return (*vision, *_lm_blocks(lm_dims(spec), shapes))


def views(shapes: Shapes) -> list[tuple[int, int]]:
    """(side in pixels, views per sample): the global view and the local crops."""
    views = [(shapes.base_size, 1)]
    if shapes.crops:
        views.append((shapes.local_size or 0, shapes.crops))
    return views


def sam_dims(spec: ModelSpec) -> SamDims:
    """SAM ViT-B sizes from either model's config."""
    if spec.family == "deepseek-ocr2":
        sam = config_value(spec.config, "vision_config.sam_config", spec.source)
        key = "vision_config.sam_config."
        hidden = config_value(spec.config, key + "hidden_size", spec.source)
        return SamDims(
            hidden=hidden,
            layers=config_value(spec.config, key + "num_hidden_layers", spec.source),
            heads=config_value(spec.config, key + "num_attention_heads", spec.source),
            global_layers=len(config_value(spec.config, key + "global_attn_indexes", spec.source)),
            mlp=int(sam.get("mlp_dim") or hidden * config_value(spec.config, key + "mlp_ratio", spec.source)),
            patch=config_value(spec.config, key + "patch_size", spec.source),
            window=config_value(spec.config, key + "window_size", spec.source),
            neck=config_value(spec.config, key + "output_channels", spec.source),
            downsample=tuple(config_value(spec.config, key + "downsample_channels", spec.source)),
        )
    sam = config_value(spec.config, "vision_config.width.sam_vit_b", spec.source)
    return SamDims(
        hidden=sam["width"],
        layers=sam["layers"],
        heads=sam["heads"],
        global_layers=len(sam["global_attn_indexes"]),
        mlp=FIXED["sam_mlp_ratio"] * sam["width"],
        patch=FIXED["sam_patch_size"],
        window=FIXED["sam_window_size"],
        neck=FIXED["sam_neck_channels"],
        downsample=tuple(sam["downsample_channels"]),
    )


def sam_blocks(sam: SamDims, side: int, views: int) -> list[Block]:
    """Patch embedding, windowed and global layers, neck and the stride-2 convolutions."""
    grid = side // sam.patch
    layer = {"height": grid, "width": grid, "hidden": sam.hidden, "heads": sam.heads, "mlp": sam.mlp}
    embed = dict(height=side, width=side, channels=sam.channels, hidden=sam.hidden, patch=sam.patch)
    blocks = [
        Block("sam", "patch_embed", "patch_embed", embed, views),
        Block(
            "sam",
            "windowed layers",
            "sam_layer",
            {**layer, "window": sam.window},
            views * (sam.layers - sam.global_layers),
        ),
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


def _vision_blocks(spec: ModelSpec, side: int, views: int) -> list[Block]:
    sam = sam_dims(spec)
    _check_widths(spec, sam)
    tokens = sam_tokens(sam, side)
    blocks = sam_blocks(sam, side, views)
    if spec.family == "deepseek-ocr":
        clip = config_value(spec.config, "vision_config.width.clip-l-14-224", spec.source)
        width = clip["width"]
        layer = dict(tokens=tokens + 1, hidden=width, heads=clip["heads"], intermediate=FIXED["clip_mlp_ratio"] * width)
        blocks.append(Block("clip", "layers (SAM features + class token)", "clip_layer", layer, views * clip["layers"]))
        projector = dict(
            tokens=tokens,
            d_in=config_value(spec.config, "projector_config.input_dim", spec.source),
            d_out=config_value(spec.config, "projector_config.n_embed", spec.source),
        )
        blocks.append(Block("projector", "linear (CLIP + SAM features)", "linear", projector, views))
        return blocks
    key = "vision_config.encoder_config."
    hidden = config_value(spec.config, key + "hidden_size", spec.source)
    heads = config_value(spec.config, key + "num_attention_heads", spec.source)
    queries = next(count for limit, count in V2_QUERIES if tokens <= limit)
    sequence = tokens + queries  # SAM patches (bidirectional) then learnt queries (causal)
    attention = dict(
        tokens=sequence,
        hidden=hidden,
        heads=heads,
        head_dim=hidden // heads,
        kv_heads=config_value(spec.config, key + "num_key_value_heads", spec.source),
    )
    layers = views * config_value(spec.config, key + "num_hidden_layers", spec.source)
    intermediate = config_value(spec.config, key + "intermediate_size", spec.source)
    blocks += [
        Block("encoder", "attention projections", "gqa_projections", attention, layers),
        Block(
            "encoder",
            "attention scores (full square under the hybrid mask)",
            "attention_scores",
            dict(q_len=sequence, kv_len=sequence, heads=heads, head_dim=hidden // heads),
            layers,
        ),
        Block("encoder", "mlp", "swiglu_mlp", dict(tokens=sequence, hidden=hidden, intermediate=intermediate), layers),
        Block(
            "projector",
            "linear (query outputs)",
            "linear",
            dict(tokens=queries, d_in=hidden, d_out=config_value(spec.config, "text_config.hidden_size", spec.source)),
            views,
        ),
    ]
    return blocks


def _check_widths(spec: ModelSpec, sam: SamDims) -> None:
    """SAM's last convolution feeds CLIP (v1, as its patch embeddings) or the encoder (v2) directly."""
    if spec.family == "deepseek-ocr":
        clip = config_value(spec.config, "vision_config.width.clip-l-14-224.width", spec.source)
        projector = config_value(spec.config, "projector_config.input_dim", spec.source)
        widths = {"CLIP width": clip, "projector_config.input_dim - CLIP width": projector - clip}
    else:
        widths = {
            "encoder_config.hidden_size": config_value(
                spec.config, "vision_config.encoder_config.hidden_size", spec.source
            )
        }
    for what, width in widths.items():
        if width != sam.downsample[-1]:
            raise ModelConfigError(
                f"{spec.source}: SAM's last downsample channels {sam.downsample[-1]} must equal the {what} {width}; "
                "make the config consistent"
            )


def lm_dims(spec: ModelSpec) -> LmDims:
    """The language model's sizes from the preset's or the local config's own keys."""
    if spec.family == "deepseek-ocr2":
        return _deepseek_lm(spec, "text_config.")
    if spec.family == "deepseek-ocr":
        return _deepseek_lm(spec, "language_config.")
    return _decoder_lm(spec)


def _deepseek_lm(spec: ModelSpec, prefix: str) -> LmDims:
    """DeepSeek-OCR's and DeepSeek-OCR-2's MoE decoder: multi-head attention, head_dim = hidden/heads."""

    def get(key: str):
        return config_value(spec.config, prefix + key, spec.source)

    layers, hidden, heads = get("num_hidden_layers"), get("hidden_size"), get("num_attention_heads")
    if prefix == "text_config.":
        dense = list(get("mlp_layer_types")).count("dense")
    else:
        dense = min(get("first_k_dense_replace"), layers)
    return LmDims(
        hidden=hidden,
        vocab=get("vocab_size"),
        layers=layers,
        heads=heads,
        kv_heads=spec.config[prefix[:-1]].get("num_key_value_heads") or heads,
        head_dim=hidden // heads,
        intermediate=get("intermediate_size"),
        dense_layers=dense,
        moe=_moe(
            get("n_routed_experts"), get("num_experts_per_tok"), get("moe_intermediate_size"), get("n_shared_experts")
        ),
    )


def _moe(experts: int, top_k: int, intermediate: int, shared: int) -> dict[str, int]:
    return dict(experts=experts, top_k=top_k, intermediate=intermediate, shared_intermediate=shared * intermediate)


def _decoder_lm(spec: ModelSpec) -> LmDims:
    """llama, mistral, qwen2, qwen3 (dense GQA), mixtral (GQA + MoE), deepseek_v2/v3 (MLA + MoE)."""
    cfg = spec.config

    def get(key: str):
        return config_value(cfg, key, spec.source)

    hidden, heads, layers = get("hidden_size"), get("num_attention_heads"), get("num_hidden_layers")
    common = dict(
        hidden=hidden,
        vocab=get("vocab_size"),
        layers=layers,
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        intermediate=get("intermediate_size"),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=cfg["model_type"] == "qwen2" or bool(cfg.get("attention_bias", False)),  # qwen2: q, k, v biases
    )
    model_type = cfg["model_type"]
    if model_type == "mixtral":
        moe = _moe(get("num_local_experts"), get("num_experts_per_tok"), get("intermediate_size"), 0)
        return LmDims(**common, dense_layers=0, moe=moe)
    if model_type in ("deepseek_v2", "deepseek_v3"):
        mla = {k: get(k) for k in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")}
        mla["q_lora_rank"] = cfg.get("q_lora_rank") or 0
        moe = _moe(
            get("n_routed_experts"), get("num_experts_per_tok"), get("moe_intermediate_size"), get("n_shared_experts")
        )
        dense = min(cfg.get("first_k_dense_replace", 0), layers)
        return LmDims(**common, dense_layers=dense, attention="mla", mla=mla, moe=moe)
    return LmDims(**common, dense_layers=layers)


@dataclass(frozen=True)
class LmPass:
    """One language-model stage: ``passes`` forwards of ``tokens`` new positions per sequence over
    ``context`` positions (summed over the passes), ``logits`` positions through the head."""

    stage: str
    tokens: int
    context: int
    passes: int
    logits: int


def lm_passes(shapes: Shapes) -> list[LmPass]:
    """Prefill and the decode stages; decode's context is the sum over its steps (attention is
    linear in the context length, so the summed count is exact)."""
    prompt, steps = shapes.prompt_tokens, shapes.inputs.new_tokens - 1
    prefill_logits = prompt if shapes.inputs.full_logits else 1
    passes = [LmPass("prefill", prompt, prompt, 1, prefill_logits)]
    if steps:
        passes += [
            LmPass("decode_first", 1, prompt + 1, 1, 1),
            LmPass("decode_last", 1, prompt + steps, 1, 1),
            LmPass("decode", 1, steps * prompt + steps * (steps + 1) // 2, steps, 1),
        ]
    return passes


def _lm_blocks(lm: LmDims, shapes: Shapes) -> list[Block]:
    batch = shapes.inputs.batch
    blocks = []
    for p in lm_passes(shapes):
        tokens = batch * p.tokens * p.passes  # positions through every per-token matrix
        sequence_layers = batch * lm.layers  # one copy per sequence and layer
        if lm.attention == "mla":
            blocks += [
                Block(
                    p.stage,
                    "attention projections (MLA)",
                    "mla_projections",
                    dict(tokens=tokens, hidden=lm.hidden, heads=lm.heads, **lm.mla),
                    lm.layers,
                ),
                Block(
                    p.stage,
                    "kv_b_proj over the cached latents",
                    "mla_kv_expand",
                    dict(
                        kv_len=p.context,
                        heads=lm.heads,
                        kv_lora_rank=lm.mla["kv_lora_rank"],
                        qk_nope_head_dim=lm.mla["qk_nope_head_dim"],
                        v_head_dim=lm.mla["v_head_dim"],
                    ),
                    sequence_layers,
                ),
                Block(
                    p.stage,
                    "attention scores",
                    "attention_scores",
                    dict(
                        q_len=p.tokens,
                        kv_len=p.context,
                        heads=lm.heads,
                        head_dim=lm.mla["qk_nope_head_dim"] + lm.mla["qk_rope_head_dim"],
                        v_head_dim=lm.mla["v_head_dim"],
                    ),
                    sequence_layers,
                ),
            ]
        else:
            blocks += [
                Block(
                    p.stage,
                    "attention projections",
                    "gqa_projections",
                    dict(tokens=tokens, hidden=lm.hidden, heads=lm.heads, kv_heads=lm.kv_heads, head_dim=lm.head_dim),
                    lm.layers,
                ),
                Block(
                    p.stage,
                    "attention scores",
                    "attention_scores",
                    dict(q_len=p.tokens, kv_len=p.context, heads=lm.heads, head_dim=lm.head_dim),
                    sequence_layers,
                ),
            ]
        if lm.dense_layers:
            blocks.append(
                Block(
                    p.stage,
                    "dense mlp",
                    "swiglu_mlp",
                    dict(tokens=tokens, hidden=lm.hidden, intermediate=lm.intermediate),
                    lm.dense_layers,
                )
            )
        if lm.moe_layers:
            blocks.append(
                Block(
                    p.stage,
                    "moe (router + top-k experts + shared)",
                    "moe",
                    dict(tokens=tokens, hidden=lm.hidden, **lm.moe),
                    lm.moe_layers,
                )
            )
        blocks.append(
            Block(
                p.stage,
                "lm_head",
                "lm_head",
                dict(tokens=batch * p.logits * p.passes, hidden=lm.hidden, vocab=lm.vocab),
            )
        )
    return blocks
