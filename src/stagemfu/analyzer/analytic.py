"""The analytic counter: the blocks of each stage (``blocks.py``) through the formula registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stagemfu.analyzer.counter_result import CounterResult
from stagemfu.analyzer.formulas import FLOP_FORMULAS
from stagemfu.models.blocks import Block, model_blocks, vision_parts
from stagemfu.models.presets import ModelSpec
from stagemfu.models.shapes import Shapes

CONVENTIONS = (  # of every FLOP figure the analyzer reports, whichever counter it comes from
    "2 FLOPs per multiply-accumulate; matrix products and convolutions only (norms, activations, "
    "softmax, bias and residual adds are not counted)",
    "attention scores count the full q x kv square, as the torch counter does for scaled_dot_product_attention; "
    "causal flash kernels skip about half of the prefill square",
)


def count_analytic(
    spec: ModelSpec, shapes: Shapes, *, formulas: Mapping[str, Callable[..., int]] = FLOP_FORMULAS
) -> CounterResult:
    """FLOPs per stage from closed-form formulas.

    Parameters
    ----------
    spec, shapes
        The model and the input shape.
    formulas
        Block type -> formula; defaults to the registry. A block whose type has no formula leaves
        its stage out and says so in the notes (never a silent 0).

    Returns
    -------
    CounterResult
        ``counter="analytic"``; ``vision`` is the sum of the vision stages (``sam``, ``clip`` or
        ``encoder``, ``projector``).
    """
    return stage_flops(model_blocks(spec, shapes), formulas=formulas)


def stage_flops(
    blocks: tuple[Block, ...], *, formulas: Mapping[str, Callable[..., int]] = FLOP_FORMULAS
) -> CounterResult:
    """Sum ``blocks`` per stage; a stage with a block no formula covers is dropped with a note."""
    flops: dict[str, int] = {}
    missing: dict[str, set[str]] = {}
    for block in blocks:
        formula = formulas.get(block.kind)
        if formula is None:
            missing.setdefault(block.stage, set()).add(block.kind)
            continue
        flops[block.stage] = flops.get(block.stage, 0) + block.repeat * formula(**block.sizes)
    for stage in missing:
        flops.pop(stage, None)
    parts = vision_parts(blocks)
    if parts and all(stage in flops for stage in parts):
        flops = {"vision": sum(flops[stage] for stage in parts), **flops}
    notes = [
        f"{stage}: no FLOP formula for block type(s) {', '.join(sorted(kinds))}" for stage, kinds in missing.items()
    ]
    return CounterResult("analytic", flops, tuple(notes))
