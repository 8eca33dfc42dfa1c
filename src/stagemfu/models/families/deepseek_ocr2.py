"""DeepSeek-OCR-2: SAM ViT-B, a Qwen2-style encoder over SAM's features and learnt queries, a
linear projector and a DeepSeek-MoE language model with multi-head attention, in transformers'
``deepseek_ocr2`` config format (``vision_config.{sam_config, encoder_config}``, ``text_config``).
Defaults for absent keys are DeepseekOcr2Config's; the text model's ``head_dim`` is always
hidden_size / heads, as transformers sets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stagemfu.errors import ModelConfigError
from stagemfu.models.blocks import Block, sam_blocks, sam_tokens
from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import EncoderDims, ModelDims, SamDims, decoder_dims, read_moe, sam_dims
from stagemfu.models.family import Family, register
from stagemfu.models.params import sam_params
from stagemfu.models.shapes import ImageRule, Shapes

# The encoder's learnt queries (modeling_deepseek_ocr2.py: query_768_resolution with 144 rows for
# maps of at most 144 patches, query_1024_resolution with 256 rows otherwise).
QUERIES = ((144, 144), (math.inf, 256))


@dataclass(frozen=True)
class Ocr2Vision:
    """SAM and the encoder; the projector maps the encoder's width to the language model's."""

    sam: SamDims
    encoder: EncoderDims


def _grids_in_loop_order(lo: int, hi: int) -> list[tuple[int, int]]:
    # transformers' get_all_supported_aspect_ratios: columns loop outside, rows inside, sorted by count
    return sorted(((i, j) for i in range(1, hi + 1) for j in range(1, hi + 1) if lo <= i * j <= hi), key=math.prod)


@register
class DeepseekOcr2(Family):
    """No newline tokens: 256 query tokens for the 1024 global view, 144 per 768 crop, one separator
    (transformers' processing_deepseek_ocr2.py / image_processing_deepseek_ocr2.py)."""

    name = "deepseek-ocr2"
    model_types = ("deepseek_ocr2",)
    preset = "deepseek-ocr2"
    image_rule: ClassVar[ImageRule] = ImageRule(
        modes={"base": (1024, None), "gundam": (1024, 768)},
        crop_range=(2, 6),
        newline_tokens=0,
        grid_candidates=_grids_in_loop_order,
        source="transformers/models/deepseek_ocr2/image_processing_deepseek_ocr2.py (size 1024, tile_size 768, "
        "min_patches 2, max_patches 6)",
    )
    stage_paths: ClassVar[dict[str, str]] = {
        "vision": "model.get_image_features",
        "sam": "model.vision_tower.sam_encoder",
        "encoder": "model.vision_tower.vision_encoder",
        "projector": "model.multi_modal_projector",
    }
    language_model_paths = ("model.language_model", "lm_head")

    def dims(self, c: ConfigReader) -> ModelDims:
        text = c.section("text_config")
        width = text.integer("moe_intermediate_size")
        moe = read_moe(text, experts="n_routed_experts", shared=text.integer("n_shared_experts", minimum=0) * width)
        layers = text.integer("num_hidden_layers")
        kinds = text.choices("mlp_layer_types", ("dense", "sparse"))
        text.check(len(kinds) >= layers, "mlp_layer_types", f"must give a type for each of the {layers} layers")
        kinds = kinds[:layers]  # transformers reads the first num_hidden_layers entries
        lm = decoder_dims(
            text,
            fixed_head_dim=True,
            dense_layers=kinds.count("dense"),
            moe=moe,
            mlp_bias=text.flag("mlp_bias", default=False),
        )
        vision = c.section("vision_config")
        sam_section, encoder_section = vision.section("sam_config"), vision.section("encoder_config")
        sam = sam_dims(
            sam_section,
            keys=("hidden_size", "num_hidden_layers", "num_attention_heads"),
            patch=sam_section.integer("patch_size", default=16),
            window=sam_section.integer("window_size", default=14),
            neck=sam_section.integer("output_channels", default=256),
            image_size=sam_section.integer("image_size", default=1024),
            mlp_ratio=sam_section.number("mlp_ratio", default=4.0),
            mlp_dim=sam_section.integer("mlp_dim") if sam_section.has("mlp_dim") else None,
        )
        e = encoder_section
        e_hidden, e_heads = e.integer("hidden_size"), e.integer("num_attention_heads")
        e_kv = e.integer("num_key_value_heads", default=32)
        e.check(e_hidden % e_heads == 0, "num_attention_heads", f"= {e_heads} must divide hidden_size = {e_hidden}")
        e.check(e_heads % e_kv == 0, "num_key_value_heads", f"= {e_kv} must divide num_attention_heads = {e_heads}")
        e.check(
            e_hidden == sam.downsample[-1],
            "hidden_size",
            f"= {e_hidden} must equal SAM's last downsample_channels {sam.downsample[-1]} (the encoder takes SAM's "
            "features as its tokens)",
        )
        encoder = EncoderDims(e_hidden, e.integer("num_hidden_layers"), e_heads, e_kv, e.integer("intermediate_size"))
        return ModelDims(lm, Ocr2Vision(sam, encoder))

    def vision_blocks(self, dims: ModelDims, side: int, views: int) -> list[Block]:
        """SAM, then the encoder over SAM's positions (bidirectional) and the learnt queries (causal),
        the full square computed under the explicit hybrid mask; the projector on the query outputs."""
        v: Ocr2Vision = dims.vision
        e, tokens = v.encoder, sam_tokens(v.sam, side)
        queries = next(count for limit, count in QUERIES if tokens <= limit)
        sequence, layers, head_dim = tokens + queries, views * e.layers, e.hidden // e.heads
        projections = dict(tokens=sequence, hidden=e.hidden, heads=e.heads, kv_heads=e.kv_heads, head_dim=head_dim)
        scores = dict(q_len=sequence, kv_len=sequence, heads=e.heads, head_dim=head_dim)
        mlp = dict(tokens=sequence, hidden=e.hidden, intermediate=e.intermediate)
        projector = dict(tokens=queries, d_in=e.hidden, d_out=dims.lm.hidden)
        return [
            *sam_blocks(v.sam, side, views),
            Block("encoder", "attention projections", "gqa_projections", projections, layers),
            Block(
                "encoder", "attention scores (full square under the hybrid mask)", "attention_scores", scores, layers
            ),
            Block("encoder", "mlp", "swiglu_mlp", mlp, layers),
            Block("projector", "linear (query outputs)", "linear", projector, views),
        ]

    def vision_params(self, dims: ModelDims) -> dict[str, int]:
        v: Ocr2Vision = dims.vision
        e, hidden = v.encoder, dims.lm.hidden
        head_dim = e.hidden // e.heads
        qkv = (e.heads + 2 * e.kv_heads) * head_dim
        layer = e.hidden * qkv + qkv + e.heads * head_dim * e.hidden + 2 * e.hidden + 3 * e.hidden * e.intermediate
        queries = sum(count for _, count in QUERIES)  # both learnt query tables
        encoder = e.layers * layer + e.hidden + queries * e.hidden  # layers, final norm, queries
        projector = e.hidden * hidden + hidden + hidden  # linear, view_separator
        return {"sam": sam_params(v.sam), "encoder": encoder, "projector": projector}

    def transformers_model(self, config: dict[str, Any]) -> tuple[type, Any]:
        import transformers

        return transformers.DeepseekOcr2ForConditionalGeneration, transformers.DeepseekOcr2Config.from_dict(config)

    def image_inputs(self, shapes: Shapes, pixels: Callable[[int, int], Any]) -> dict[str, Any]:
        """Global views, and in gundam mode every crop with ``num_local_patches`` per sample."""
        batch = shapes.inputs.batch
        kwargs: dict[str, Any] = {"pixel_values": pixels(batch, shapes.base_size)}
        if shapes.crops:
            kwargs["pixel_values_local"] = pixels(batch * shapes.crops, shapes.local_size)
            kwargs["num_local_patches"] = [shapes.crops] * batch
        return kwargs

    def processed_image(self, shapes: Shapes, image: Path, kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Pixels from transformers' own DeepseekOcr2ImageProcessorPil (resize, pad, crops, normalise);
        its crop count must equal the shape rule's."""
        import transformers
        from PIL import Image

        crop = shapes.inputs.mode == "gundam"
        processor = transformers.DeepseekOcr2ImageProcessorPil(
            size={"height": shapes.base_size, "width": shapes.base_size},
            tile_size=shapes.local_size if crop else shapes.base_size,
            crop_to_patches=crop,
        )
        with Image.open(image) as img:
            processed = processor(images=[img.convert("RGB")] * shapes.inputs.batch, return_tensors="pt")
        if list(processed["num_local_patches"]) != [shapes.crops] * shapes.inputs.batch:
            raise ModelConfigError(
                f"--image {image}: the image processor cut {list(processed['num_local_patches'])} crops but the "
                f"shape rule gives {shapes.crops}; pass --crops to match"
            )
        reference = kwargs["pixel_values"]
        out = dict(kwargs, pixel_values=processed["pixel_values"].to(reference.device, reference.dtype))
        if shapes.crops:
            out["pixel_values_local"] = processed["pixel_values_local"].to(reference.device, reference.dtype)
        return out, f"image {image.name}: pixels from transformers' DeepseekOcr2ImageProcessorPil"
