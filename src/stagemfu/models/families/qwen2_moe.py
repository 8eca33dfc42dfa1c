"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (q, k, v biases, ``qkv_bias``) and a
mixture of ``num_experts`` experts of width ``moe_intermediate_size`` (``num_experts_per_tok`` per
token) plus one shared expert of ``shared_expert_intermediate_size`` whose output a sigmoid gate
(a hidden -> 1 projection) scales. Layer i is sparse unless it is in ``mlp_only_layers`` or
(i + 1) is not a multiple of ``decoder_sparse_step``; dense layers have a gated MLP of
``intermediate_size``. Defaults for absent keys are Qwen2MoeConfig's.
"""

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims, read_moe
from stagemfu.models.families.qwen2 import qwen_window
from stagemfu.models.family import Family, register


def sparse_layer_count(c: ConfigReader) -> int:
    """Layers with a mixture of experts under the Qwen-MoE rule (``mlp_only_layers``, ``decoder_sparse_step``)."""
    layers = c.integer("num_hidden_layers")
    dense_only = set(c.integers("mlp_only_layers", maximum=layers - 1, default=()))
    step = c.integer("decoder_sparse_step", default=1)
    return sum(1 for i in range(layers) if i not in dense_only and (i + 1) % step == 0)


@register
class Qwen2Moe(Family):
    name = "qwen2_moe"
    model_types = ("qwen2_moe",)

    def dims(self, c: ConfigReader) -> ModelDims:
        shared = c.integer("shared_expert_intermediate_size", default=5632)
        defaults = {"num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408}
        moe = read_moe(c, experts="num_experts", shared=shared, shared_gate=True, defaults=defaults)
        dense = c.integer("num_hidden_layers") - sparse_layer_count(c)
        bias = c.flag("qkv_bias", default=True)
        lm = decoder_dims(
            c,
            kv_heads_default=16,
            qkv_bias=bias,
            o_bias=False,
            dense_layers=dense,
            moe=moe,
            sliding_window=qwen_window(c),
        )
        return ModelDims(lm)
