"""Inputs of one generate() call and the shapes they give: views, crop grid, image tokens.

An image model turns an image into a fixed set of views (one global view, plus local crops in
``gundam`` mode) and a number of image placeholder tokens that its own processor puts in the
prompt. Each image family states its processor's rule as an :class:`ImageRule` (its
``image_rule``; see ``stagemfu.models.families.deepseek_ocr`` and ``deepseek_ocr2``), and
:func:`resolve_shapes` applies it, so the analyzer counts the same positions the model computes.

Every input is bounded: token counts and the batch by ``MAX_INPUT``, so shapes stay within what
torch and 64-bit counts can hold (the analyzer also refuses any count past 2**63 - 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stagemfu.errors import ModelConfigError

if TYPE_CHECKING:
    from stagemfu.models.presets import ModelSpec

STAGES = ("vision", "sam", "clip", "encoder", "projector", "prefill", "decode", "decode_first", "decode_last")
MODES = ("tiny", "small", "base", "large", "gundam")
# Bytes per stored value of each dtype the analyzer counts: tf32 is fp32 storage run through TF32 matrix
# units; fp8 stores weights, activations and the KV cache in one byte (the peak table has each's peak).
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "tf32": 4, "fp8": 1}
DTYPES = tuple(DTYPE_BYTES)
BUILD_DTYPES = ("bf16", "fp16", "fp32")  # what `stagemfu run` builds a model in (torch dtypes)
MAX_INPUT = 2**31 - 1  # tokens, batch, crops and image sides


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


@dataclass(frozen=True)
class ImageRule:
    """How one model family turns an image into views and tokens (a family's ``image_rule``)."""

    modes: dict[str, tuple[int, int | None]]  # mode -> (global view side, local crop side or None)
    crop_range: tuple[int, int]  # fewest and most local crops the grid rule allows
    newline_tokens: int  # extra tokens per row of a view grid
    grid_candidates: Callable[[int, int], list[tuple[int, int]]]
    source: str


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
    rule = spec.family.image_rule
    if rule is None:
        return Shapes(inputs, 0, None, (0, 0), 0, inputs.text_tokens)
    if inputs.mode not in rule.modes:
        raise ModelConfigError(
            f"{spec.name}: mode {inputs.mode!r} is not one of this model's modes ({', '.join(rule.modes)})"
        )
    base_size, local_size = rule.modes[inputs.mode]
    if inputs.crops is not None and local_size is None:
        raise ModelConfigError(f"--crops {inputs.crops}: local crops exist only in gundam mode, not {inputs.mode}")
    grid = _crop_grid(spec, rule, inputs, local_size) if local_size else (0, 0)
    sam = spec.dims.vision.sam
    side = _token_side(base_size, sam.patch, sam.token_stride // sam.patch)
    tokens = side * (side + rule.newline_tokens) + 1  # global view grid + view separator
    if grid != (0, 0):
        local = _token_side(local_size, sam.patch, sam.token_stride // sam.patch)
        tokens += local * grid[1] * (local * grid[0] + rule.newline_tokens)
    return Shapes(inputs, base_size, local_size, grid, tokens, tokens + inputs.text_tokens)


def _token_side(pixels: int, patch: int, downsample: int) -> int:
    """Image tokens along one side of a view: patches, then ``downsample``-fold fewer (rounded up)."""
    return math.ceil(pixels // patch / downsample)


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
    """Types and ranges of every field; values may come from a shapes.json as well as from flags."""
    for name in ("text_tokens", "new_tokens", "batch"):
        value = getattr(inputs, name)
        if not _whole(value, 1):
            flag = name.replace("_", "-")
            raise ModelConfigError(f"--{flag} {_shown(value)}: must be a positive whole number, at most {MAX_INPUT}")
    if not isinstance(inputs.dtype, str) or inputs.dtype not in DTYPES:
        raise ModelConfigError(f"--dtype {_shown(inputs.dtype)}: unknown; use one of {', '.join(DTYPES)}")
    if not isinstance(inputs.mode, str) or inputs.mode not in MODES:
        raise ModelConfigError(f"--mode {_shown(inputs.mode)}: unknown; use one of {', '.join(MODES)}")
    if inputs.crops is not None and not _whole(inputs.crops, 0):
        raise ModelConfigError(f"--crops {_shown(inputs.crops)}: must be 0 or more, at most {MAX_INPUT}")
    size = inputs.image_size
    if size is not None and not (
        isinstance(size, (tuple, list)) and len(size) == 2 and all(_whole(s, 1) for s in size)
    ):
        raise ModelConfigError(f"--image-size {_shown(size)}: must be WIDTHxHEIGHT, sides positive whole numbers")
    if not isinstance(inputs.full_logits, bool):
        raise ModelConfigError(f"--full-logits {_shown(inputs.full_logits)}: must be true or false")


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= MAX_INPUT


def _shown(value: Any) -> str:
    """An input value in a message: ``1e15`` as written, sizes as WxH, anything else clipped to one line."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    text = value if isinstance(value, str) else repr(value)
    text = repr(text)[1:-1] if isinstance(value, str) else text  # control characters escaped
    return text if len(text) <= 40 else text[:37] + "..."


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
