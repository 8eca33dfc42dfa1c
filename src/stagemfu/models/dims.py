"""A model's sizes in one vocabulary, whatever config format they came from, checked on the way in.

Each family module reads its own config keys into these value objects (through
:class:`~stagemfu.models.config.ConfigReader`); everything downstream (blocks, parameters, bytes,
KV cache, the torch build) reads the value objects only. :func:`decoder_dims` reads the keys that
transformers' decoder configs share (llama, mistral, qwen2/3, mixtral, deepseek_v2/v3, qwen2/3_moe),
with each family's defaults for the keys transformers fills in when absent.

The rules between keys are checked here once: heads divide into the width when ``head_dim`` is
implied, key/value heads divide the query heads, ``top_k`` is at most the number of experts, and
so on. A config that breaks one is refused with the key named, before any count is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagemfu.models.config import REQUIRED, ConfigReader


@dataclass(frozen=True)
class Mla:
    """Multi-head latent attention (DeepSeek-V2/V3): per-head q/k split into a no-rotary and a
    rotary part; keys and values come from one cached latent of ``kv_lora_rank`` values plus a
    shared rotary key of ``qk_rope_head_dim``. ``q_lora_rank`` 0 projects q directly."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class Moe:
    """A mixture-of-experts MLP: router, ``top_k`` of ``experts`` gated MLPs of width
    ``intermediate`` per token, always-on shared experts of summed width ``shared_intermediate``
    (0 for none), and for ``shared_gate`` a sigmoid gate (a hidden -> 1 projection) on them."""

    experts: int
    top_k: int
    intermediate: int
    shared_intermediate: int = 0
    shared_gate: bool = False


@dataclass(frozen=True)
class LmDims:
    """A decoder language model: ``dense_layers`` of its ``layers`` have a gated MLP of width
    ``intermediate``, the rest the ``moe``; attention is grouped-query (multi-head when
    ``kv_heads == heads``) unless ``mla`` is set. Biases and norms only change parameter counts."""

    hidden: int
    vocab: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    dense_layers: int
    mla: Mla | None = None
    moe: Moe | None = None
    tied_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    @property
    def kv_values_per_token(self) -> int:
        """Values one layer caches per position: K and V of every key/value head, or MLA's latent and
        its shared rotary key (transformers caches the compressed form)."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.kv_heads * self.head_dim


@dataclass(frozen=True)
class ModelDims:
    """Every size a model's counts need: the language model and, for a vision-language model, its
    family's vision dims (a family-specific value object; None for a text-only model)."""

    lm: LmDims
    vision: Any = field(default=None)


def decoder_dims(
    c: ConfigReader,
    *,
    kv_heads_default: int | None = None,
    head_dim_default: int | None = None,
    fixed_head_dim: bool = False,
    qkv_bias: bool | None = None,
    o_bias: bool | None = None,
    mlp_bias: bool = False,
    qk_norm: bool = False,
    dense_layers: int | None = None,
    moe: Moe | None = None,
    mla: Mla | None = None,
    sliding_window: int | None = None,
) -> LmDims:
    """The sizes transformers' decoder configs share, read from ``c`` and checked.

    Parameters
    ----------
    c
        The config (or its text section).
    kv_heads_default, head_dim_default
        The family config's defaults when ``num_key_value_heads`` / ``head_dim`` are absent; None
        means "the number of heads" / "hidden_size // heads" (then heads must divide hidden).
    fixed_head_dim
        The family always uses hidden_size // heads, whatever ``head_dim`` says.
    qkv_bias, o_bias
        Fixed biases of the q/k/v and output projections; None reads ``attention_bias``.
    mlp_bias, qk_norm, sliding_window
        As the family builds them.
    dense_layers
        Layers with a dense MLP; None means all of them (no MoE).
    moe, mla
        The family's MoE and latent-attention sizes, already read and checked.
    """
    hidden = c.integer("hidden_size")
    layers = c.integer("num_hidden_layers")
    heads = c.integer("num_attention_heads")
    kv_heads = c.integer("num_key_value_heads", default=kv_heads_default or heads)
    c.check(heads % kv_heads == 0, "num_key_value_heads", f"= {kv_heads} must divide num_attention_heads = {heads}")
    if fixed_head_dim or (head_dim_default is None and not c.has("head_dim")):
        c.check(hidden % heads == 0, "num_attention_heads", f"= {heads} must divide hidden_size = {hidden}")
    head_dim = hidden // heads if fixed_head_dim else c.integer("head_dim", default=head_dim_default or hidden // heads)
    dense = layers if dense_layers is None else dense_layers

    def bias(fixed: bool | None) -> bool:
        return c.flag("attention_bias", default=False) if fixed is None else fixed

    return LmDims(
        hidden=hidden,
        vocab=c.integer("vocab_size"),
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=c.integer("intermediate_size") if dense else 0,
        dense_layers=dense,
        mla=mla,
        moe=moe,
        tied_embeddings=c.flag("tie_word_embeddings", default=False),
        qkv_bias=bias(qkv_bias),
        o_bias=bias(o_bias),
        mlp_bias=mlp_bias,
        qk_norm=qk_norm,
        sliding_window=sliding_window,
    )


def read_moe(
    c: ConfigReader,
    *,
    experts: str,
    intermediate: str = "moe_intermediate_size",
    shared: int = 0,
    shared_gate: bool = False,
    defaults: dict[str, int] | None = None,
) -> Moe:
    """MoE sizes from the family's keys (``experts`` names the expert count); ``top_k`` must not
    exceed the experts. ``shared`` is the summed width of the shared experts, read by the family."""
    defaults = defaults or {}
    count = c.integer(experts, default=defaults.get(experts, REQUIRED))
    top_k = c.integer("num_experts_per_tok", default=defaults.get("num_experts_per_tok", REQUIRED))
    c.check(top_k <= count, "num_experts_per_tok", f"= {top_k} must be at most {experts} = {count}")
    width = c.integer(intermediate, default=defaults.get(intermediate, REQUIRED))
    return Moe(experts=count, top_k=top_k, intermediate=width, shared_intermediate=shared, shared_gate=shared_gate)


def read_mla(c: ConfigReader, *, q_lora_default: int) -> Mla:
    """DeepSeek-V2/V3 latent-attention sizes. ``q_lora_rank: null`` means q is projected directly
    (0 here); an absent key takes the family's default, as transformers does."""
    mla = Mla(
        q_lora_rank=c.optional_integer("q_lora_rank", absent=q_lora_default) or 0,
        kv_lora_rank=c.integer("kv_lora_rank"),
        qk_nope_head_dim=c.integer("qk_nope_head_dim", minimum=0),
        qk_rope_head_dim=c.integer("qk_rope_head_dim", minimum=0),
        v_head_dim=c.integer("v_head_dim"),
    )
    c.check(mla.qk_head_dim > 0, "qk_nope_head_dim", "+ qk_rope_head_dim must be at least 1")
    return mla


@dataclass(frozen=True)
class SamDims:
    """SAM ViT-B as both DeepSeek-OCR models run it: windowed and global layers, a neck, then
    stride-2 convolutions (``downsample``: their output channels)."""

    hidden: int
    layers: int
    heads: int
    global_layers: int
    mlp: int
    patch: int
    window: int
    neck: int
    downsample: tuple[int, ...]
    image_size: int
    channels: int = 3

    @property
    def token_stride(self) -> int:
        """Pixels per image token along a side: the patch, halved once per stride-2 convolution."""
        return self.patch * 2 ** len(self.downsample)


@dataclass(frozen=True)
class ClipDims:
    """CLIP-L/14 run over SAM's features (DeepSeek-OCR)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    image_size: int
    patch: int


@dataclass(frozen=True)
class EncoderDims:
    """DeepSeek-OCR-2's Qwen2-style encoder over SAM's features and learnt queries."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


def sam_dims(
    c: ConfigReader,
    *,
    keys: tuple[str, str, str],
    patch: int,
    window: int,
    neck: int,
    image_size: int,
    mlp_ratio: float,
    mlp_dim: int | None = None,
) -> SamDims:
    """SAM's sizes from a section holding ``keys`` (its width, layer and head keys, which the two
    OCR config formats name differently), ``global_attn_indexes`` and ``downsample_channels``; the
    rest as the family read it. Heads divide the width; global layers are distinct layers."""
    width_key, layers_key, heads_key = keys
    hidden, layers, heads = c.integer(width_key), c.integer(layers_key), c.integer(heads_key)
    c.check(hidden % heads == 0, heads_key, f"= {heads} must divide {width_key} = {hidden}")
    indexes = c.integers("global_attn_indexes", maximum=layers - 1)
    c.check(len(set(indexes)) == len(indexes), "global_attn_indexes", "must not name a layer twice")
    downsample = c.integers("downsample_channels", minimum=1)
    c.check(len(downsample) > 0, "downsample_channels", "must list at least one convolution")
    return SamDims(
        hidden=hidden,
        layers=layers,
        heads=heads,
        global_layers=len(indexes),
        mlp=mlp_dim if mlp_dim is not None else max(int(hidden * mlp_ratio), 1),
        patch=patch,
        window=window,
        neck=neck,
        downsample=downsample,
        image_size=image_size,
    )
