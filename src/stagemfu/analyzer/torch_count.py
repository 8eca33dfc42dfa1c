"""FLOPs per stage from torch's own counter, ``torch.utils.flop_counter.FlopCounterMode``, on meta tensors.

The real model (:func:`stagemfu.models.build.build_model`) runs on the meta device, so every
operator sees true shapes while nothing is allocated or computed: a full DeepSeek-OCR model counts
in about a second. Each stage is one call: the vision method with the example images (its
sub-stages measured by forward hooks on their modules), the language model over the prompt, and one
decode step on a meta KV cache of the right length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from stagemfu.analyzer.counter_result import CounterResult
from stagemfu.models.build import (
    build_model,
    example_inputs,
    language_model,
    require_model_extra,
    resolve,
    stage_modules,
)

if TYPE_CHECKING:
    import torch

    from stagemfu.models.presets import ModelSpec
    from stagemfu.models.shapes import Shapes

# Meta tensors carry no data; FLOP counts do not depend on the dtype.
META_DTYPE = "bf16"

NOTES = (
    "torch: torch.utils.flop_counter.FlopCounterMode over the transformers model on the meta device "
    "(shapes only, bf16; counts do not depend on the dtype)",
    "torch: only matmul-type ops count (mm, addmm, bmm, convolution, attention kernels); norms, activations, "
    "softmax, rotary embeddings and other elementwise ops are not counted",
    "torch: attention runs as explicit matmuls over the full score matrix (causal masking is not discounted); "
    "SAM's windowed attention is counted on its padded 14x14 windows",
)
EXPERTS_NOTE = (
    "torch: MoE experts run through transformers' batched_mm experts implementation (one matmul per routed "
    "token x top_k); the GPU default, grouped_mm, multiplies the same rows but torch's formula registry has no "
    "entry for aten._grouped_mm, so counting through it would miss every routed expert"
)


def count_torch(spec: ModelSpec, shapes: Shapes) -> CounterResult:
    """FLOPs per stage of one ``generate`` call, by ``FlopCounterMode`` on the meta device.

    Parameters
    ----------
    spec
        The model.
    shapes
        The resolved inputs (views, crops, prompt length, batch, new tokens).

    Returns
    -------
    CounterResult
        ``counter="torch"``; stages ``vision`` and its sub-stages (OCR models), ``prefill`` (language
        model over the prompt, lm_head on the last position unless ``full_logits``), and with at
        least one decode step ``decode_first``, ``decode_last`` and ``decode`` (all steps).
    """
    require_model_extra()
    import torch

    model = build_model(spec, device="meta", dtype=META_DTYPE, experts="batched_mm")
    flops: dict[str, int] = {}
    if spec.dims.vision is not None:
        flops.update(_vision_flops(spec, shapes, model))
    backbone, head = language_model(spec, model)
    inputs = shapes.inputs
    step = _language_model_step(backbone, head, inputs.batch, torch.device("meta"))
    prompt = shapes.prompt_tokens
    flops["prefill"] = step(prompt, 0, prompt if inputs.full_logits else 1)
    notes = list(NOTES)
    steps = inputs.new_tokens - 1
    if steps:
        first, last = step(1, prompt, 1), step(1, prompt + steps - 1, 1)
        flops.update(decode_first=first, decode_last=last, decode=decode_total(first, last, steps))
        notes.append(
            f"torch: decode = {steps} steps x (decode_first + decode_last) / 2: a step's count grows linearly "
            "with its context, so the mean of the first and last step is the mean step"
        )
    else:
        notes.append("torch: new_tokens = 1: the only generated token comes from prefill; no decode step to count")
    if any(name.endswith(".experts") for name, _ in model.named_modules()):
        notes.append(EXPERTS_NOTE)
    return CounterResult(counter="torch", flops=flops, notes=tuple(notes))


def decode_total(first: int, last: int, steps: int) -> int:
    """Sum of ``steps`` decode steps whose count is linear in the step index: steps x mean(first, last)."""
    return steps * (first + last) // 2


def flop_counter() -> Any:
    """torch's FlopCounterMode, printing nothing (its default prints a table on exit)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def _language_model_step(
    backbone: torch.nn.Module, head: torch.nn.Module, batch: int, device: torch.device
) -> Callable[[int, int, int], int]:
    """A function (new tokens, cached tokens, logit positions) -> FLOPs of one language-model call.

    The cache is filled by an uncounted meta forward over ``cached`` positions, so the counted call
    attends over ``cached + new`` positions exactly as in generation.
    """
    import torch

    hidden = backbone.config.hidden_size
    dtype = next(backbone.parameters()).dtype

    def embeds(tokens: int) -> torch.Tensor:
        return torch.empty(batch, tokens, hidden, dtype=dtype, device=device)

    def step(new: int, cached: int, logits: int) -> int:
        with torch.no_grad():
            cache = backbone(inputs_embeds=embeds(cached), use_cache=True).cache if cached else None
            with flop_counter() as counter:
                out = backbone(inputs_embeds=embeds(new), cache=cache, use_cache=True)
                head(out.last_hidden_state[:, -logits:])
        return counter.get_total_flops()

    return step


def _vision_flops(spec: ModelSpec, shapes: Shapes, model: torch.nn.Module) -> dict[str, int]:
    """``vision`` and each vision sub-stage, over the global views and every local crop of the batch."""
    import torch

    paths = stage_modules(spec, model)
    meta_shapes = dataclasses.replace(shapes, inputs=dataclasses.replace(shapes.inputs, dtype=META_DTYPE))
    kwargs = example_inputs(spec, meta_shapes, device="meta")
    images = {key: value for key, value in kwargs.items() if key not in ("input_ids", "attention_mask")}
    submodules = {stage: resolve(model, path) for stage, path in paths.items() if stage != "vision"}
    with flop_counter() as counter, _stage_deltas(submodules, counter) as totals, torch.no_grad():
        resolve(model, paths["vision"])(**images)
    return {"vision": counter.get_total_flops(), **totals}


@contextmanager
def _stage_deltas(modules: dict[str, torch.nn.Module], counter: Any) -> Iterator[dict[str, int]]:
    """Add to ``totals[stage]`` the counter's growth over every forward call of that stage's module."""
    totals = dict.fromkeys(modules, 0)
    started: dict[str, int] = {}
    handles = []
    for stage, module in modules.items():

        def before(*_: Any, stage: str = stage) -> None:
            started[stage] = counter.get_total_flops()

        def after(*_: Any, stage: str = stage) -> None:
            totals[stage] += counter.get_total_flops() - started[stage]

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()
