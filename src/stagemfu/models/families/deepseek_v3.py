"""DeepSeek-V3: DeepSeek-V2's MLA and MoE with group-limited routing (same work per token),
its own defaults (DeepseekV3Config: 3 dense layers, 1 shared expert, 256 experts) and no MLP bias."""

from typing import ClassVar

from stagemfu.models.families.deepseek_v2 import DeepseekV2
from stagemfu.models.family import register


@register
class DeepseekV3(DeepseekV2):
    name = "deepseek_v3"
    model_types = ("deepseek_v3",)
    defaults: ClassVar[dict[str, int]] = {"first_k_dense_replace": 3, "n_shared_experts": 1, "n_routed_experts": 256,
                                          "moe_intermediate_size": 2048, "q_lora_rank": 1536,
                                          "num_experts_per_tok": 8}  # fmt: skip
    mlp_bias: ClassVar[bool] = False
