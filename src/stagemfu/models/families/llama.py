"""Llama (transformers' ``LlamaForCausalLM``): grouped-query attention and a gated MLP.

``attention_bias`` puts biases on q, k, v and o; ``mlp_bias`` on the MLP's three projections.
"""

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims
from stagemfu.models.family import Family, register


@register
class Llama(Family):
    name = "llama"
    model_types = ("llama",)

    def dims(self, c: ConfigReader) -> ModelDims:
        return ModelDims(decoder_dims(c, mlp_bias=c.flag("mlp_bias", default=False)))
