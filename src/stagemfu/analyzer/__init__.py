"""FLOPs, bytes and parameters per stage of one ``generate`` call, counted three ways.

:func:`analyze` runs the requested counters (``analytic``: closed-form formulas over the model's
blocks, always available; ``torch``: ``torch.utils.flop_counter`` over the transformers model;
``fvcore``: fvcore's ``FlopCountAnalysis`` x 2), picks one figure per stage by the rule in
:mod:`stagemfu.analyzer.combine`, notes every disagreement over 2 % with its cause, and adds
parameters and estimated bytes. :meth:`Analysis.document` is the ``stagemfu.analyze/1`` JSON.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass

from stagemfu.analyzer.analytic import CONVENTIONS, count_analytic
from stagemfu.analyzer.blocks import model_blocks
from stagemfu.analyzer.combine import TOLERANCE, combine
from stagemfu.analyzer.counter_result import CounterResult
from stagemfu.analyzer.memory import BYTES_NOTE, model_params, stage_bytes, stage_params
from stagemfu.errors import MissingDependencyError, ModelConfigError
from stagemfu.models.presets import ModelSpec
from stagemfu.models.shapes import IMAGE_RULES, Inputs, Shapes, resolve_shapes

SCHEMA = "stagemfu.analyze/1"
COUNTERS = ("analytic", "torch", "fvcore")
RULE = (
    "flops = the analytic count when it covers the stage, else the torch counter, else fvcore; "
    f"the others are checks and every difference over {100 * TOLERANCE:g} % is noted with its cause"
)


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyze`.

    Attributes
    ----------
    spec, shapes
        The model and the input shape counted.
    stages
        Stage -> ``{"flops", "flops_analytic", "flops_torch", "flops_fvcore", "bytes", "params",
        "notes"}`` in stage order; ``flops_*`` is None for a counter that was not run or could not
        measure the stage.
    counters
        The counters that were asked for.
    notes
        Conventions, the rule for ``flops``, and the counters' own notes.
    """

    spec: ModelSpec
    shapes: Shapes
    stages: dict[str, dict]
    counters: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def params(self) -> int:
        """All parameters of the model."""
        return model_params(self.spec)

    @property
    def total_flops(self) -> int:
        """Model total for one generation: vision + prefill (language model) + all decode steps."""
        return sum(self.stages[s]["flops"] or 0 for s in ("vision", "prefill", "decode") if s in self.stages)

    def document(self) -> dict:
        """The ``stagemfu.analyze/1`` document (plain JSON types)."""
        inputs = asdict(self.shapes.inputs)
        inputs["image_size"] = list(self.shapes.inputs.image_size) if self.shapes.inputs.image_size else None
        return {
            "schema": SCHEMA,
            "model": {
                "name": self.spec.name,
                "family": self.spec.family,
                "source": self.spec.source,
                "params": self.params,
                "flops": self.total_flops,
            },
            "inputs": inputs,
            "shapes": {
                "base_size": self.shapes.base_size,
                "local_size": self.shapes.local_size,
                "crop_grid": list(self.shapes.crop_grid),
                "image_tokens": self.shapes.image_tokens,
                "prompt_tokens": self.shapes.prompt_tokens,
            },
            "counters": list(self.counters),
            "notes": list(self.notes),
            "stages": self.stages,
        }


def analyze(spec: ModelSpec, inputs: Inputs, *, counters: tuple[str, ...] = COUNTERS) -> Analysis:
    """FLOPs, bytes and parameters per stage of ``spec`` for ``inputs``.

    Parameters
    ----------
    spec
        The model (:func:`stagemfu.models.load_model_spec`).
    inputs
        The generate call: mode, crops, prompt and generated tokens, batch, dtype.
    counters
        Which counters to run, any of ``analytic``, ``torch``, ``fvcore``. A torch-based counter
        whose dependencies are missing gives null figures and a note naming the extra to install.

    Returns
    -------
    Analysis
        Stages ``vision``, ``sam``, ``clip`` or ``encoder``, ``projector`` (image models),
        ``prefill``, ``decode``, ``decode_first``, ``decode_last`` (when more than one token is
        generated).

    Raises
    ------
    ModelConfigError
        Bad inputs for this model, a config key the count needs, or an unknown counter.
    """
    unknown = [c for c in counters if c not in COUNTERS]
    if unknown or not counters:
        raise ModelConfigError(f"--counters {','.join(unknown) or '(none)'}: use one or more of {', '.join(COUNTERS)}")
    shapes = resolve_shapes(spec, inputs)
    blocks = model_blocks(spec, shapes)
    results, notes = [], [RULE, *CONVENTIONS]
    for counter in COUNTERS:
        if counter not in counters:
            continue
        try:
            result = _run_counter(counter, spec, shapes)
        except MissingDependencyError as err:
            notes.append(f"{counter} counter not run: {err}")
            continue
        results.append(result)
        notes += result.notes
    notes += [
        "prefill is the language model alone over the prompt (image tokens included); vision runs inside prefill "
        "in a trace but is counted once, as its own stage",
        "prefill computes lm_head for the last prompt position only, as generate() does"
        + (" (--full-logits: every prompt position counted)" if inputs.full_logits else "; --full-logits counts all"),
        "decode step t feeds one token per sequence and attends over prompt + t positions; decode sums all "
        f"{max(inputs.new_tokens - 1, 0)} steps",
        "MoE: router + top-k routed experts + shared experts for every token",
        BYTES_NOTE,
        *_sliding_window_note(spec, shapes),
    ]
    if spec.family in IMAGE_RULES:
        notes.append(
            f"{shapes.image_tokens} image tokens per sample, counted as the processor of the model counts them "
            f"({IMAGE_RULES[spec.family].source})"
        )
    combined = combine(results, blocks)
    byte_counts, params = stage_bytes(spec, shapes), stage_params(spec)
    for stage, entry in combined.items():
        entry.update(bytes=byte_counts.get(stage), params=params.get(stage), notes=entry.pop("notes"))
    return Analysis(spec, shapes, combined, tuple(counters), tuple(notes))


def _sliding_window_note(spec: ModelSpec, shapes: Shapes) -> list[str]:
    """Sliding-window attention is counted over the whole context: say so when the window is shorter."""
    window = spec.config.get("sliding_window") if spec.config.get("use_sliding_window", True) else None
    context = shapes.prompt_tokens + shapes.inputs.new_tokens - 1
    if spec.family != "decoder-lm" or not window or context <= window:
        return []
    return [
        f"attention is counted over the whole context (up to {context} positions); the sliding window of the model "
        f"({window}) limits what its kernels attend to, so attention FLOPs are an upper bound"
    ]


def _run_counter(counter: str, spec: ModelSpec, shapes: Shapes) -> CounterResult:
    """One counter; the torch-based ones live in ``torch_count.py`` / ``fvcore_count.py``."""
    if counter == "analytic":
        return count_analytic(spec, shapes)
    module = importlib.import_module(f"stagemfu.analyzer.{counter}_count")
    return getattr(module, f"count_{counter}")(spec, shapes)


__all__ = ["COUNTERS", "SCHEMA", "Analysis", "CounterResult", "analyze"]
