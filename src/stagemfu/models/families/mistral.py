"""Mistral: Llama's blocks without biases, with sliding-window attention (``sliding_window``,
4096 when absent, null for none). The window only changes what a kernel attends to; the count is
over the whole context and says so."""

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims
from stagemfu.models.family import Family, register


@register
class Mistral(Family):
    name = "mistral"
    model_types = ("mistral",)

    def dims(self, c: ConfigReader) -> ModelDims:
        window = c.optional_integer("sliding_window", absent=4096)
        return ModelDims(decoder_dims(c, kv_heads_default=8, qkv_bias=False, o_bias=False, sliding_window=window))
