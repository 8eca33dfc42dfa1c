"""Mixtral: Mistral's attention with every MLP a mixture of ``num_local_experts`` experts of width
``intermediate_size``, ``num_experts_per_tok`` per token, no shared expert."""

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims, read_moe
from stagemfu.models.family import Family, register


@register
class Mixtral(Family):
    name = "mixtral"
    model_types = ("mixtral",)

    def dims(self, c: ConfigReader) -> ModelDims:
        moe = read_moe(c, experts="num_local_experts", intermediate="intermediate_size")
        window = c.optional_integer("sliding_window", absent=None)
        return ModelDims(
            decoder_dims(
                c, kv_heads_default=8, qkv_bias=False, o_bias=False, dense_layers=0, moe=moe, sliding_window=window
            )
        )
