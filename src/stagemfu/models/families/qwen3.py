"""Qwen3: grouped-query attention with RMSNorm on each head's queries and keys (``q_norm``,
``k_norm``), ``attention_bias`` on q, k, v and o, ``head_dim`` 128 when absent (it need not be
hidden_size / heads)."""

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims
from stagemfu.models.families.qwen2 import qwen_window
from stagemfu.models.family import Family, register


@register
class Qwen3(Family):
    name = "qwen3"
    model_types = ("qwen3",)

    def dims(self, c: ConfigReader) -> ModelDims:
        lm = decoder_dims(c, kv_heads_default=32, head_dim_default=128, qk_norm=True, sliding_window=qwen_window(c))
        return ModelDims(lm)
