"""DeepSeek-OCR (v1) composed from transformers' own building blocks.

transformers has no class for DeepSeek-OCR v1, so this module assembles it from the blocks it does
ship, with the architecture of the published model (https://huggingface.co/deepseek-ai/DeepSeek-OCR,
paper https://arxiv.org/abs/2510.18234):

- SAM ViT-B (ViTDet-style windowed + global attention, neck, two stride-2 convs 256→512→1024):
  transformers' ``DeepseekOcr2SamVisionEncoder``, which is this same encoder (OCR-2 only changes the
  last conv's width);
- CLIP-L/14 fed with the SAM feature map as its patch embeddings (plus the class token): transformers'
  ``CLIPVisionEmbeddings`` (its patch conv exists in the checkpoint but is not run) and ``CLIPEncoder``;
- the concatenation of CLIP's output (class token dropped) and the SAM features (1024 + 1024 = 2048),
  a linear projector 2048→1280, learnt image-newline and view-separator embeddings;
- the DeepSeek-V2-style MoE language model with multi-head attention: transformers'
  ``DeepseekOcr2TextModel``, the same architecture.

Parameter count on the published config: 3.336e9 (the checkpoint is one 6.67 GB bf16 file). The
module names are transformers' and this module's, not those of DeepSeek's remote code, so DeepSeek's
own checkpoint does not load into it as is (its CLIP also fuses q/k/v into one projection); a
checkpoint saved from this class does.

Importing this module imports torch and transformers; ``stagemfu.models.build`` imports it lazily.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import CLIPVisionConfig, GenerationMixin, PreTrainedConfig
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import (
    DeepseekOcr2SamVisionConfig,
    DeepseekOcr2TextConfig,
)
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2PreTrainedModel,
    DeepseekOcr2SamVisionEncoder,
    DeepseekOcr2TextModel,
)

from stagemfu.errors import ModelConfigError
from stagemfu.models.families.deepseek_ocr import FIXED as DEEPSEEK_OCR_FIXED

# The DeepSeek tokenizer's "<image>" id, shared by DeepSeek-OCR and DeepSeek-OCR-2 (the latter's
# published transformers config: https://huggingface.co/deepseek-community/DeepSeek-OCR-2).
IMAGE_TOKEN_ID = 128815

# CLIP-L/14 (https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json): quick_gelu,
# layer norm eps 1e-5. The sizes config.json leaves out (SAM ViT-B's patch, window and neck, CLIP's
# 4x MLP) are the family's FIXED sizes (models/families/deepseek_ocr.py), which the analytic counter
# reads too, so the two never disagree. DeepSeek-OCR's "mlp_ratio" key belongs to no block of v1.
CLIP_ACTIVATION = "quick_gelu"
CLIP_LAYER_NORM_EPS = 1e-5


@strict
class DeepseekOcrConfig(PreTrainedConfig):
    """Configuration of the composed DeepSeek-OCR v1 model, in transformers' sub-config terms.

    Build it from the published config.json with :func:`config_from_published`; the fields here are
    the transformers configs of the blocks the model is made of.
    """

    model_type = "stagemfu_deepseek_ocr"
    sub_configs_defaults = {
        "sam_config": DeepseekOcr2SamVisionConfig,
        "clip_config": CLIPVisionConfig,
        "text_config": DeepseekOcr2TextConfig,
    }

    sam_config: dict | PreTrainedConfig | None = None
    clip_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_input_dim: int = 2048
    image_token_id: int = IMAGE_TOKEN_ID
    tie_word_embeddings: bool = False


def config_from_published(published: dict[str, Any]) -> DeepseekOcrConfig:
    """Translate DeepSeek-OCR's own config.json into the transformers configs of its blocks.

    Parameters
    ----------
    published
        The dict of deepseek-ai/DeepSeek-OCR's config.json (``language_config``,
        ``vision_config.width.{sam_vit_b, clip-l-14-224}``, ``projector_config``), possibly with
        values overridden by the user.

    Returns
    -------
    DeepseekOcrConfig
        The configuration :class:`DeepseekOcrForConditionalGeneration` is built from.

    Raises
    ------
    ModelConfigError
        When a required section or key is missing, or the config asks for something v1 does not
        have (MLA attention, a non-linear projector).
    """
    try:
        language = published.get("language_config", published)
        widths = published["vision_config"]["width"]
        sam, clip = widths["sam_vit_b"], widths["clip-l-14-224"]
        projector = published["projector_config"]
        layers = language["num_hidden_layers"]
        dense_layers = language.get("first_k_dense_replace", 0)
        text = {
            "vocab_size": language["vocab_size"],
            "hidden_size": language["hidden_size"],
            "intermediate_size": language["intermediate_size"],
            "moe_intermediate_size": language["moe_intermediate_size"],
            "num_hidden_layers": layers,
            "num_attention_heads": language["num_attention_heads"],
            "num_key_value_heads": language.get("num_key_value_heads", language["num_attention_heads"]),
            "n_routed_experts": language["n_routed_experts"],
            "n_shared_experts": language["n_shared_experts"],
            "num_experts_per_tok": language["num_experts_per_tok"],
            "topk_method": language.get("topk_method", "greedy"),
            "n_group": language.get("n_group"),
            "topk_group": language.get("topk_group"),
            "max_position_embeddings": language.get("max_position_embeddings", 8192),
            "bos_token_id": language.get("bos_token_id", 0),
            "eos_token_id": language.get("eos_token_id", 1),
            "mlp_layer_types": ["dense"] * dense_layers + ["sparse"] * (layers - dense_layers),
        }
        sam_config = {
            "hidden_size": sam["width"],
            "num_hidden_layers": sam["layers"],
            "num_attention_heads": sam["heads"],
            "global_attn_indexes": list(sam["global_attn_indexes"]),
            "downsample_channels": list(sam["downsample_channels"]),
            "image_size": published["vision_config"].get("image_size", 1024),
            "patch_size": DEEPSEEK_OCR_FIXED["sam_patch_size"],
            "window_size": DEEPSEEK_OCR_FIXED["sam_window_size"],
            "output_channels": DEEPSEEK_OCR_FIXED["sam_neck_channels"],
        }
        clip_config = {
            "hidden_size": clip["width"],
            "intermediate_size": DEEPSEEK_OCR_FIXED["clip_mlp_ratio"] * clip["width"],
            "num_hidden_layers": clip["layers"],
            "num_attention_heads": clip["heads"],
            "image_size": clip["image_size"],
            "patch_size": clip["patch_size"],
            "hidden_act": CLIP_ACTIVATION,
            "layer_norm_eps": CLIP_LAYER_NORM_EPS,
        }
        projector_type, projector_input, projector_output = (
            projector.get("projector_type", "linear"),
            projector["input_dim"],
            projector["n_embed"],
        )
    except (KeyError, TypeError) as err:
        raise ModelConfigError(
            f"DeepSeek-OCR config: missing key {err}; give the complete deepseek-ai/DeepSeek-OCR config.json "
            "layout (language_config, vision_config.width.sam_vit_b / clip-l-14-224, projector_config)"
        ) from err
    if language.get("use_mla") or language.get("kv_lora_rank"):
        raise ModelConfigError(
            "DeepSeek-OCR config: use_mla/kv_lora_rank is set, but DeepSeek-OCR's language model uses multi-head "
            "attention; analyze an MLA model as a decoder LM from its own config.json"
        )
    if projector_type != "linear" or projector_output != text["hidden_size"]:
        raise ModelConfigError(
            f"DeepSeek-OCR config: projector_config {projector_type!r} {projector_input}->{projector_output} "
            f"must be 'linear' into the language model's hidden_size {text['hidden_size']}"
        )
    if clip_config["hidden_size"] != sam_config["downsample_channels"][-1]:
        raise ModelConfigError(
            f"DeepSeek-OCR config: CLIP width {clip_config['hidden_size']} must equal the SAM output channels "
            f"{sam_config['downsample_channels'][-1]} (downsample_channels[-1]): CLIP takes SAM's features as patches"
        )
    if projector_input != sam_config["downsample_channels"][-1] + clip_config["hidden_size"]:
        raise ModelConfigError(
            f"DeepSeek-OCR config: projector_config.input_dim {projector_input} must equal the SAM output channels "
            f"{sam_config['downsample_channels'][-1]} + CLIP width {clip_config['hidden_size']}"
        )
    return DeepseekOcrConfig(
        sam_config=sam_config,
        clip_config=clip_config,
        text_config=text,
        projector_input_dim=projector_input,
        image_token_id=published.get("image_token_id", IMAGE_TOKEN_ID),
    )


class DeepseekOcrClipEncoder(nn.Module):
    """CLIP-L/14 run over SAM's feature map instead of its own patch convolution."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        """Class token + SAM features (as patch embeddings) + interpolated positions → CLIP layers."""
        batch, _, height, width = sam_features.shape
        patches = sam_features.flatten(2).transpose(1, 2)
        class_token = self.embeddings.class_embedding.to(patches.dtype).expand(batch, 1, -1)
        tokens = torch.cat([class_token, patches], dim=1)
        patch = self.config.patch_size
        tokens = tokens + self.embeddings.interpolate_pos_encoding(tokens, height * patch, width * patch)
        return self.encoder(inputs_embeds=self.pre_layrnorm(tokens)).last_hidden_state


class DeepseekOcrPreTrainedModel(DeepseekOcr2PreTrainedModel):
    """Initialisation of the v1 pieces OCR-2's base class does not know (CLIP, newline, separator)."""

    config: DeepseekOcrConfig

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, mean=0.0, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, DeepseekOcrModel):
            std = 1 / math.sqrt(self.config.text_config.hidden_size)
            init.normal_(module.image_newline, mean=0.0, std=std)
            init.normal_(module.view_separator, mean=0.0, std=std)


class DeepseekOcrVisionModel(DeepseekOcrPreTrainedModel):
    """SAM then CLIP over one batch of views; returns the 2048-wide features the projector takes."""

    def __init__(self, config: DeepseekOcrConfig):
        super().__init__(config)
        self.sam_encoder = DeepseekOcr2SamVisionEncoder(config.sam_config)
        self.clip_encoder = DeepseekOcrClipEncoder(config.clip_config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutput:
        sam_features = self.sam_encoder(pixel_values).last_hidden_state
        clip_features = self.clip_encoder(sam_features)
        combined = torch.cat([clip_features[:, 1:], sam_features.flatten(2).transpose(1, 2)], dim=-1)
        return BaseModelOutput(last_hidden_state=combined)


class DeepseekOcrModel(DeepseekOcrPreTrainedModel):
    """Vision tower, projector, layout embeddings and the language model."""

    def __init__(self, config: DeepseekOcrConfig):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.vision_tower = DeepseekOcrVisionModel(config)
        self.multi_modal_projector = nn.Linear(config.projector_input_dim, hidden)
        self.image_newline = nn.Parameter(torch.empty(hidden))
        self.view_separator = nn.Parameter(torch.empty(hidden))
        self.language_model = DeepseekOcr2TextModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def _with_newlines(self, features: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        """Append the newline embedding after each row of a (rows, columns) grid of token features."""
        grid = features.reshape(rows, columns, -1)
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, -1)
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Image embeddings per sample, laid out as DeepSeek-OCR's processor counts its image tokens.

        Local crops (if any) come first, tiled into one (rows·side, columns·side) grid; then the
        global view; each grid row ends with the newline embedding; the view separator closes.

        Parameters
        ----------
        pixel_values
            Global views, ``(batch, 3, base, base)``.
        pixel_values_local
            All local crops of the batch, ``(sum of crops, 3, local, local)``, or None.
        images_spatial_crop
            ``(batch, 2)`` crop grid (columns, rows) per sample; ``(1, 1)`` or ``(0, 0)`` means no crops.
        """
        global_features = self.multi_modal_projector(self.vision_tower(pixel_values).last_hidden_state)
        side = math.isqrt(global_features.shape[1])
        grids = [(0, 0)] * len(global_features) if images_spatial_crop is None else images_spatial_crop.tolist()
        crops = [columns * rows if columns * rows > 1 else 0 for columns, rows in grids]
        local_features: tuple[torch.Tensor, ...] = ()
        if pixel_values_local is not None and sum(crops):
            local = self.multi_modal_projector(self.vision_tower(pixel_values_local).last_hidden_state)
            local_side = math.isqrt(local.shape[1])
            local_features = torch.split(local, crops, dim=0)
        samples = []
        for index, global_view in enumerate(global_features):
            parts = [self._with_newlines(global_view, side, side), self.view_separator.to(global_view.dtype)[None]]
            if crops[index]:
                columns, rows = grids[index]
                tiles = local_features[index].reshape(rows, columns, local_side, local_side, -1)
                tiled = tiles.permute(0, 2, 1, 3, 4).reshape(rows * local_side * columns * local_side, -1)
                parts.insert(0, self._with_newlines(tiled, rows * local_side, columns * local_side))
            samples.append(torch.cat(parts, dim=0))
        return samples

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            features = torch.cat(self.get_image_features(pixel_values, pixel_values_local, images_spatial_crop))
            placeholders = (input_ids == self.config.image_token_id).unsqueeze(-1)
            inputs_embeds = inputs_embeds.masked_scatter(placeholders, features.to(inputs_embeds.dtype))
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )


class DeepseekOcrForConditionalGeneration(DeepseekOcrPreTrainedModel, GenerationMixin):
    """DeepSeek-OCR v1 with its language-model head; ``generate()`` works as for any transformers VLM."""

    def __init__(self, config: DeepseekOcrConfig):
        super().__init__(config)
        self.model = DeepseekOcrModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_local=pixel_values_local,
            images_spatial_crop=images_spatial_crop,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        return CausalLMOutputWithPast(logits=logits, cache=outputs.cache)
