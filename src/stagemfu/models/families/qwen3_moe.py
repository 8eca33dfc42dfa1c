"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (per-head q/k RMSNorm,
``attention_bias``) and a mixture of ``num_experts`` experts of width ``moe_intermediate_size``,
``num_experts_per_tok`` per token, no shared expert; layers chosen as in Qwen2-MoE. Defaults for
absent keys are Qwen3MoeConfig's.
"""

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims, read_moe
from stagemfu.models.families.qwen2 import qwen_window
from stagemfu.models.families.qwen2_moe import sparse_layer_count
from stagemfu.models.family import Family, register


@register
class Qwen3Moe(Family):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)

    def dims(self, c: ConfigReader) -> ModelDims:
        defaults = {"num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768}
        moe = read_moe(c, experts="num_experts", defaults=defaults)
        dense = c.integer("num_hidden_layers") - sparse_layer_count(c)
        lm = decoder_dims(
            c, kv_heads_default=4, qk_norm=True, dense_layers=dense, moe=moe, sliding_window=qwen_window(c)
        )
        return ModelDims(lm)
