"""Inputs of one generate() call and the shapes they give: views, crop grid, image tokens.

Each DeepSeek-OCR model turns an image into a fixed set of views (one global view, plus local
crops in ``gundam`` mode) and a number of image placeholder tokens that its own processor puts in
the prompt. The rules here follow those processors, so the analyzer counts the same positions the
model computes:

- DeepSeek-OCR (v1, ``infer`` in deepseek-ai/DeepSeek-OCR's modeling_deepseekocr.py and its README
  modes): a view of side S gives q = ceil(S/16/4) tokens a side, laid out as q rows of q tokens plus
  one newline token each; the local crops are tiled into one (q_l*cols) x (q_l*rows) grid with a
  newline per row; one view separator ends the image. base (1024): 16*(16+1) + 1 = 273.
- DeepSeek-OCR-2 (transformers' processing_deepseek_ocr2.py / image_processing_deepseek_ocr2.py):
  no newline tokens; 256 query tokens for the 1024 global view, 144 per 768 crop, one separator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from stagemfu.errors import ModelConfigError
from stagemfu.models.presets import DEEPSEEK_OCR_FIXED, ModelSpec, config_value

STAGES = ("vision", "sam", "clip", "encoder", "projector", "prefill", "decode", "decode_first", "decode_last")
MODES = ("tiny", "small", "base", "large", "gundam")
DTYPES = ("bf16", "fp16", "fp32")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Inputs:
    """What one ``generate`` call is given; every field has the CLI flag of the same name.

    ``new_tokens`` counts every generated token: the first comes out of prefill, the other
    ``new_tokens - 1`` out of one decode step each. ``image_size`` is (width, height) of the original
    image and only picks the gundam crop grid; ``crops`` sets the number of crops directly.
    """

    mode: str = "base"
    image_size: tuple[int, int] | None = None
    crops: int | None = None
    text_tokens: int = 64
    new_tokens: int = 32
    batch: int = 1
    dtype: str = "bf16"
    full_logits: bool = False


@dataclass(frozen=True)
class Shapes:
    """Everything counters and model builders derive from (spec, inputs); per sample unless stated.

    ``base_size`` is the global view side in pixels (0 for a text-only model), ``local_size`` the
    crop side in gundam mode, ``crop_grid`` the (columns, rows) of local crops, ``(0, 0)`` for none.
    """

    inputs: Inputs
    base_size: int
    local_size: int | None
    crop_grid: tuple[int, int]
    image_tokens: int
    prompt_tokens: int

    @property
    def crops(self) -> int:
        """Number of local crops (views besides the global one)."""
        return self.crop_grid[0] * self.crop_grid[1]


def _set_order(lo: int, hi: int) -> list[tuple[int, int]]:
    # DeepSeek-OCR's dynamic_preprocess: a set of (cols, rows) sorted by tile count
    return sorted({(i, j) for i in range(1, hi + 1) for j in range(1, hi + 1) if lo <= i * j <= hi}, key=math.prod)


def _loop_order(lo: int, hi: int) -> list[tuple[int, int]]:
    # transformers' get_all_supported_aspect_ratios: columns loop outside, rows inside, sorted by count
    return sorted(((i, j) for i in range(1, hi + 1) for j in range(1, hi + 1) if lo <= i * j <= hi), key=math.prod)


@dataclass(frozen=True)
class ImageRule:
    """How one model family turns an image into views and tokens."""

    modes: dict[str, tuple[int, int | None]]  # mode -> (global view side, local crop side or None)
    crop_range: tuple[int, int]  # fewest and most local crops the grid rule allows
    newline_tokens: int  # extra tokens per row of a view grid
    grid_candidates: Callable[[int, int], list[tuple[int, int]]]
    source: str


IMAGE_RULES: dict[str, ImageRule] = {
    "deepseek-ocr": ImageRule(
        modes={
            "tiny": (512, None),
            "small": (640, None),
            "base": (1024, None),
            "large": (1280, None),
            "gundam": (1024, 640),
        },
        crop_range=(2, 9),
        newline_tokens=1,
        grid_candidates=_set_order,
        source="https://github.com/deepseek-ai/DeepSeek-OCR (README modes; modeling_deepseekocr.py infer)",
    ),
    "deepseek-ocr2": ImageRule(
        modes={"base": (1024, None), "gundam": (1024, 768)},
        crop_range=(2, 6),
        newline_tokens=0,
        grid_candidates=_loop_order,
        source="transformers/models/deepseek_ocr2/image_processing_deepseek_ocr2.py (size 1024, tile_size 768, "
        "min_patches 2, max_patches 6)",
    ),
}


def resolve_shapes(spec: ModelSpec, inputs: Inputs) -> Shapes:
    """Views, crop grid and prompt length of ``inputs`` on the model ``spec``.

    Parameters
    ----------
    spec
        The model.
    inputs
        The call; ``mode``, ``image_size`` and ``crops`` are ignored for a text-only model.

    Returns
    -------
    Shapes
        ``image_tokens`` as the model's processor counts them; ``prompt_tokens`` adds the text.

    Raises
    ------
    ModelConfigError
        A non-positive token count or batch, an unknown dtype, a mode the model does not have,
        gundam without ``crops`` or ``image_size``, or a crop count the model's rule cannot give.
    """
    _check_inputs(inputs)
    if spec.family == "decoder-lm":
        return Shapes(inputs, 0, None, (0, 0), 0, inputs.text_tokens)
    rule = IMAGE_RULES[spec.family]
    if inputs.mode not in rule.modes:
        raise ModelConfigError(
            f"{spec.name}: mode {inputs.mode!r} is not one of this model's modes ({', '.join(rule.modes)})"
        )
    base_size, local_size = rule.modes[inputs.mode]
    if inputs.crops is not None and local_size is None:
        raise ModelConfigError(f"--crops {inputs.crops}: local crops exist only in gundam mode, not {inputs.mode}")
    grid = _crop_grid(spec, rule, inputs, local_size) if local_size else (0, 0)
    stride = _token_stride(spec)
    side = math.ceil(base_size // stride[0] / stride[1])
    tokens = side * (side + rule.newline_tokens) + 1  # global view grid + view separator
    if grid != (0, 0):
        local = math.ceil(local_size // stride[0] / stride[1])
        tokens += local * grid[1] * (local * grid[0] + rule.newline_tokens)
    return Shapes(inputs, base_size, local_size, grid, tokens, tokens + inputs.text_tokens)


def _token_stride(spec: ModelSpec) -> tuple[int, int]:
    """(SAM patch size, downsampling of the stride-2 convs after the neck): pixels -> image tokens."""
    if spec.family == "deepseek-ocr2":
        sam = config_value(spec.config, "vision_config.sam_config", spec.source)
        channels = config_value(spec.config, "vision_config.sam_config.downsample_channels", spec.source)
        return int(sam.get("patch_size", 16)), 2 ** len(channels)
    channels = config_value(spec.config, "vision_config.width.sam_vit_b.downsample_channels", spec.source)
    return DEEPSEEK_OCR_FIXED["sam_patch_size"], 2 ** len(channels)


def _crop_grid(spec: ModelSpec, rule: ImageRule, inputs: Inputs, local_size: int) -> tuple[int, int]:
    lo, hi = rule.crop_range
    if inputs.crops is not None:
        if inputs.crops == 0:
            return (0, 0)
        if not lo <= inputs.crops <= hi:
            raise ModelConfigError(
                f"{spec.name}: --crops {inputs.crops} is out of range; gundam takes 0 or {lo}..{hi} crops"
            )
        grids = [g for g in rule.grid_candidates(lo, hi) if math.prod(g) == inputs.crops]
        if inputs.image_size is None:  # no image: the squarest grid, wider than tall on a tie
            return min(grids, key=lambda g: (abs(g[0] - g[1]), -g[0]))
        aspect = inputs.image_size[0] / inputs.image_size[1]
        return min(grids, key=lambda g: (abs(aspect - g[0] / g[1]), -g[0]))
    if inputs.image_size is None:
        raise ModelConfigError(
            f"{spec.name}: gundam mode needs --crops N ({lo}..{hi}, or 0) or --image-size WxH to pick the crop grid"
        )
    width, height = inputs.image_size
    if max(width, height) <= local_size:
        return (0, 0)  # both processors skip cropping for an image no larger than one crop
    return _closest_grid(width, height, local_size, rule.grid_candidates(lo, hi))


def _closest_grid(width: int, height: int, tile: int, candidates: list[tuple[int, int]]) -> tuple[int, int]:
    """The processors' rule: nearest aspect ratio; on a tie the later (larger) grid wins while the
    image area exceeds half the area the grid's tiles cover."""
    best, best_diff = (1, 1), float("inf")
    for grid in candidates:
        diff = abs(width / height - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * grid[0] * grid[1]:
            best = grid
    return best


def _check_inputs(inputs: Inputs) -> None:
    for name in ("text_tokens", "new_tokens", "batch"):
        value = getattr(inputs, name)
        if not isinstance(value, int) or value < 1:
            flag = name.replace("_", "-")
            raise ModelConfigError(f"--{flag} {value}: must be a positive whole number")
    if inputs.dtype not in DTYPES:
        raise ModelConfigError(f"--dtype {inputs.dtype}: unknown; use one of {', '.join(DTYPES)}")
    if inputs.mode not in MODES:
        raise ModelConfigError(f"--mode {inputs.mode}: unknown; use one of {', '.join(MODES)}")
    if inputs.crops is not None and inputs.crops < 0:
        raise ModelConfigError(f"--crops {inputs.crops}: must be 0 or more")
    if inputs.image_size is not None and min(inputs.image_size) < 1:
        raise ModelConfigError(f"--image-size {inputs.image_size[0]}x{inputs.image_size[1]}: sides must be positive")


def ranges_per_generation(new_tokens: int, crops: int) -> dict[str, int]:
    """How many NVTX ranges of a stage one ``generate`` call of these models makes, where it is not one.

    ``decode`` has one range per generated token after the first (``decode_first`` and
    ``decode_last`` are one step each). With local crops (gundam), the DeepSeek-OCR models run
    the vision tower twice: on the global view, then on the batch of crops, so ``sam``, ``clip``
    or ``encoder`` and ``projector`` each have two ranges inside the one ``vision`` range; the
    analyzer's count covers both.
    """
    counts = {"decode": new_tokens - 1} if new_tokens > 1 else {}
    if crops > 0:
        counts.update(dict.fromkeys(("sam", "clip", "encoder", "projector"), 2))
    return counts
