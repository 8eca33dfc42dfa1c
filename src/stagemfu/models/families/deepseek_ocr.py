"""DeepSeek-OCR (v1): SAM ViT-B, CLIP-L/14 over SAM's features, a linear projector and a
DeepSeek-MoE language model with multi-head attention, in deepseek-ai/DeepSeek-OCR's own config
format (``language_config``, ``vision_config.width.{sam_vit_b, clip-l-14-224}``, ``projector_config``).

Sizes the config leaves out come from the code that builds the model: SAM ViT-B as
segment-anything's ``build_sam_vit_b`` makes it (16-pixel patches, 14-token windows, 4x MLP,
256-channel neck; https://github.com/facebookresearch/segment-anything) and CLIP-L/14's 4x MLP
(https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from stagemfu.models.blocks import Block, clip_blocks, sam_blocks, sam_tokens
from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ClipDims, ModelDims, SamDims, decoder_dims, read_moe, sam_dims
from stagemfu.models.family import Family, register
from stagemfu.models.params import clip_params, clip_patch_params, sam_params
from stagemfu.models.shapes import ImageRule, Shapes

FIXED = {"sam_patch_size": 16, "sam_window_size": 14, "sam_mlp_ratio": 4, "sam_neck_channels": 256, "clip_mlp_ratio": 4}


@dataclass(frozen=True)
class OcrVision:
    """SAM, CLIP over SAM's features, and the projector from both (``projector_in`` wide)."""

    sam: SamDims
    clip: ClipDims
    projector_in: int


def _grids_as_a_set(lo: int, hi: int) -> list[tuple[int, int]]:
    # DeepSeek-OCR's dynamic_preprocess: a set of (cols, rows) sorted by tile count
    return sorted({(i, j) for i in range(1, hi + 1) for j in range(1, hi + 1) if lo <= i * j <= hi}, key=math.prod)


@register
class DeepseekOcr(Family):
    """A view of side S gives q = ceil(S/16/4) tokens a side, laid out as q rows of q tokens plus one
    newline token each; the local crops are tiled into one (q_l*cols) x (q_l*rows) grid with a newline
    per row; one view separator ends the image (``infer`` in deepseek-ai/DeepSeek-OCR's
    modeling_deepseekocr.py and its README modes). base (1024): 16*(16+1) + 1 = 273."""

    name = "deepseek-ocr"
    preset = "deepseek-ocr"
    image_rule: ClassVar[ImageRule] = ImageRule(
        modes={"tiny": (512, None), "small": (640, None), "base": (1024, None), "large": (1280, None),
               "gundam": (1024, 640)},
        crop_range=(2, 9),
        newline_tokens=1,
        grid_candidates=_grids_as_a_set,
        source="https://github.com/deepseek-ai/DeepSeek-OCR (README modes; modeling_deepseekocr.py infer)",
    )  # fmt: skip
    stage_paths: ClassVar[dict[str, str]] = {
        "vision": "model.get_image_features",
        "sam": "model.vision_tower.sam_encoder",
        "clip": "model.vision_tower.clip_encoder",
        "projector": "model.multi_modal_projector",
    }
    language_model_paths = ("model.language_model", "lm_head")

    def accepts(self, config: dict) -> bool:
        width = config.get("vision_config", {})
        width = width.get("width") if isinstance(width, dict) else None
        return config.get("model_type") == "deepseek_vl_v2" and isinstance(width, dict) and "clip-l-14-224" in width

    def dims(self, c: ConfigReader) -> ModelDims:
        language = c.section("language_config")
        language.check(
            not language.raw("use_mla", False) and not language.has("kv_lora_rank"),
            "use_mla",
            "/ kv_lora_rank is set, but DeepSeek-OCR's language model uses multi-head attention; analyze an MLA "
            "model from its own config.json",
        )
        width = language.integer("moe_intermediate_size")
        shared = language.integer("n_shared_experts", minimum=0)
        moe = read_moe(language, experts="n_routed_experts", shared=shared * width)
        layers = language.integer("num_hidden_layers")
        dense = min(language.integer("first_k_dense_replace", minimum=0), layers)
        lm = decoder_dims(language, fixed_head_dim=True, qkv_bias=False, o_bias=False, dense_layers=dense, moe=moe)
        vision = c.section("vision_config")
        widths = vision.section("width")
        sam_section, clip_section = widths.section("sam_vit_b"), widths.section("clip-l-14-224")
        sam = sam_dims(
            sam_section,
            keys=("width", "layers", "heads"),
            patch=FIXED["sam_patch_size"],
            window=FIXED["sam_window_size"],
            neck=FIXED["sam_neck_channels"],
            image_size=vision.integer("image_size", default=1024),
            mlp_ratio=FIXED["sam_mlp_ratio"],
        )
        clip_width, clip_heads = clip_section.integer("width"), clip_section.integer("heads")
        clip_section.check(clip_width % clip_heads == 0, "heads", f"= {clip_heads} must divide width = {clip_width}")
        clip_section.check(
            clip_width == sam.downsample[-1],
            "width",
            f"= {clip_width} must equal SAM's last downsample_channels {sam.downsample[-1]} (CLIP takes SAM's "
            "features as its patch embeddings)",
        )
        clip = ClipDims(
            hidden=clip_width,
            layers=clip_section.integer("layers"),
            heads=clip_heads,
            intermediate=FIXED["clip_mlp_ratio"] * clip_width,
            image_size=clip_section.integer("image_size", default=224),
            patch=clip_section.integer("patch_size", default=14),
        )
        projector = c.section("projector_config")
        kind = projector.raw("projector_type", "linear")
        projector.check(kind == "linear", "projector_type", "must be 'linear' (DeepSeek-OCR's projector)")
        d_in, d_out = projector.integer("input_dim"), projector.integer("n_embed")
        projector.check(
            d_in == sam.downsample[-1] + clip.hidden,
            "input_dim",
            f"= {d_in} must equal SAM's output channels {sam.downsample[-1]} + CLIP width {clip.hidden}",
        )
        projector.check(d_out == lm.hidden, "n_embed", f"= {d_out} must equal language_config.hidden_size {lm.hidden}")
        return ModelDims(lm, OcrVision(sam, clip, d_in))

    def vision_blocks(self, dims: ModelDims, side: int, views: int) -> list[Block]:
        """SAM, CLIP over SAM's positions plus the class token, the projector on CLIP + SAM features."""
        v: OcrVision = dims.vision
        tokens = sam_tokens(v.sam, side)
        projector = dict(tokens=tokens, d_in=v.projector_in, d_out=dims.lm.hidden)
        return [
            *sam_blocks(v.sam, side, views),
            *clip_blocks(v.clip, tokens + 1, views),
            Block("projector", "linear (CLIP + SAM features)", "linear", projector, views),
        ]

    def vision_params(self, dims: ModelDims) -> dict[str, int]:
        v: OcrVision = dims.vision
        hidden = dims.lm.hidden
        projector = v.projector_in * hidden + hidden + 2 * hidden  # linear, image_newline, view_separator
        return {"sam": sam_params(v.sam), "clip": clip_params(v.clip), "projector": projector}

    def unused_params(self, dims: ModelDims) -> int:
        return clip_patch_params(dims.vision.clip)

    def transformers_model(self, config: dict[str, Any]) -> tuple[type, Any]:
        """transformers has no DeepSeek-OCR v1: :mod:`stagemfu.models.deepseek_ocr_v1` composes it."""
        from stagemfu.models import deepseek_ocr_v1

        return deepseek_ocr_v1.DeepseekOcrForConditionalGeneration, deepseek_ocr_v1.config_from_published(config)

    def image_inputs(self, shapes: Shapes, pixels: Callable[[int, int], Any]) -> dict[str, Any]:
        """Global views, and in gundam mode every crop with the grid as ``images_spatial_crop``
        (columns, rows) per sample, which stays on the CPU (it only lays out the embeddings)."""
        import torch

        batch = shapes.inputs.batch
        kwargs = {"pixel_values": pixels(batch, shapes.base_size)}
        if shapes.crops:
            kwargs["pixel_values_local"] = pixels(batch * shapes.crops, shapes.local_size)
            kwargs["images_spatial_crop"] = torch.tensor([list(shapes.crop_grid)] * batch)
        return kwargs
