"""DeepSeek-V2: multi-head latent attention (MLA) and DeepSeek-MoE.

Layers from ``first_k_dense_replace`` on have a mixture of ``n_routed_experts`` experts of width
``moe_intermediate_size`` (``num_experts_per_tok`` per token) plus ``n_shared_experts`` always-on
experts of the same width; the first ones a dense MLP of ``intermediate_size``. transformers caches
the compressed latent (``kv_lora_rank``) and the shared rotary key (``qk_rope_head_dim``) per position.
Defaults for absent keys are DeepseekV2Config's (``q_lora_rank`` 1536; null means q is projected
directly).
"""

from typing import ClassVar

from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims, decoder_dims, read_mla, read_moe
from stagemfu.models.family import Family, register


@register
class DeepseekV2(Family):
    name = "deepseek_v2"
    model_types = ("deepseek_v2",)
    defaults: ClassVar[dict[str, int]] = {"first_k_dense_replace": 0, "n_shared_experts": 2, "n_routed_experts": 64,
                                          "moe_intermediate_size": 1407, "q_lora_rank": 1536}  # fmt: skip
    mlp_bias: ClassVar[bool] = True  # DeepseekV2MLP reads mlp_bias; V3's MLP has none

    def dims(self, c: ConfigReader) -> ModelDims:
        d = self.defaults
        shared = c.integer("n_shared_experts", minimum=0, default=d["n_shared_experts"])
        width = c.integer("moe_intermediate_size", default=d["moe_intermediate_size"])
        moe = read_moe(c, experts="n_routed_experts", shared=shared * width, defaults=d)
        layers = c.integer("num_hidden_layers")
        first_dense = c.integer("first_k_dense_replace", minimum=0, default=d["first_k_dense_replace"])
        mla = read_mla(c, q_lora_default=d["q_lora_rank"])
        mlp_bias = c.flag("mlp_bias", default=False) if self.mlp_bias else False
        lm = decoder_dims(c, dense_layers=min(first_dense, layers), moe=moe, mla=mla, mlp_bias=mlp_bias)
        return ModelDims(lm)
