"""Qwen2: Llama's blocks with biases on q, k and v (not o); a sliding window only with
``use_sliding_window``. transformers' Qwen2Config has 32 key/value heads when the key is absent."""

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims
from stagemfu.models.family import Family, register


def qwen_window(c: ConfigReader) -> int | None:
    """The Qwen configs' sliding window: ``sliding_window`` when ``use_sliding_window`` is true."""
    return c.optional_integer("sliding_window", absent=4096) if c.flag("use_sliding_window", default=False) else None


@register
class Qwen2(Family):
    name = "qwen2"
    model_types = ("qwen2",)

    def dims(self, c: ConfigReader) -> ModelDims:
        return ModelDims(
            decoder_dims(c, kv_heads_default=32, qkv_bias=True, o_bias=False, sliding_window=qwen_window(c))
        )
