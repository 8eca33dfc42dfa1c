"""FLOPs, bytes and parameters per stage of one ``generate`` call, counted three ways.

:func:`analyze` runs the requested counters (``analytic``: closed-form formulas over the model's
blocks, always available; ``torch``: ``torch.utils.flop_counter`` over the transformers model;
``fvcore``: fvcore's ``FlopCountAnalysis`` x 2), picks one figure per stage by the rule in
:mod:`stagemfu.analyzer.combine`, notes every disagreement over 2 % with its cause, and adds
parameters and estimated bytes. The result is a typed table (one row per stage, each counter a
column) that the report joins as it is; the ``stagemfu.analyze/1`` JSON is made only when an
output is written (:mod:`stagemfu.report.render.analyze_data`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import polars as pl

from stagemfu.analyzer.analytic import CONVENTIONS, stage_flops
from stagemfu.analyzer.combine import TOLERANCE, combine
from stagemfu.analyzer.counter_result import CounterResult
from stagemfu.analyzer.memory import BYTES_NOTE, KV_COLUMNS, model_params, stage_bytes, stage_kv_bytes, stage_params
from stagemfu.errors import MissingDependencyError, ModelConfigError
from stagemfu.models.blocks import model_blocks
from stagemfu.models.presets import ModelSpec
from stagemfu.models.shapes import Inputs, Shapes, resolve_shapes
from stagemfu.notebook import Summarized

COUNTERS = ("analytic", "torch", "fvcore")
INT64_MAX = 2**63 - 1  # every count is an int64 column downstream (polars, the report's join)
RULE = (
    "flops = the analytic count when it covers the stage, else the torch counter, else fvcore; "
    f"the others are checks and every difference over {100 * TOLERANCE:g} % is noted with its cause"
)
# The columns of Analysis.stages, in order: counts are Int64 (null where a counter has no figure).
STAGE_COLUMNS: dict[str, Any] = {
    "stage": pl.Utf8,
    "flops": pl.Int64,
    **{f"flops_{c}": pl.Int64 for c in COUNTERS},
    "bytes": pl.Int64,
    **dict.fromkeys(KV_COLUMNS, pl.Int64),
    "params": pl.Int64,
    "notes": pl.List(pl.Utf8),
}
MODEL_STAGES = ("vision", "prefill", "decode")  # one generation: vision runs inside prefill, counted once


@dataclass(frozen=True, repr=False)  # repr and Jupyter summary: stagemfu.notebook
class Analysis(Summarized):
    """The result of :func:`analyze`.

    Attributes
    ----------
    spec, shapes
        The model and the input shape counted.
    stages
        One row per stage, in stage order: ``stage``, ``flops`` (the chosen count),
        ``flops_analytic``, ``flops_torch``, ``flops_fvcore`` (null for a counter that was not run
        or could not measure the stage), ``bytes`` (estimated DRAM traffic, the KV cache's
        included), ``kv_read_bytes`` and ``kv_write_bytes`` (the KV cache read and written),
        ``kv_bytes`` (the KV cache held when the stage ends, all layers and sequences; 0 for a
        vision stage), ``params`` and ``notes`` (the stage's counter disagreements).
    counters
        The counters that were asked for.
    notes
        Conventions, the rule for ``flops``, and the counters' own notes.
    """

    spec: ModelSpec
    shapes: Shapes
    stages: pl.DataFrame
    counters: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def params(self) -> int:
        """All parameters of the model."""
        return model_params(self.spec)

    @property
    def total_flops(self) -> int:
        """Model total for one generation: vision + prefill (language model) + all decode steps."""
        return int(self.stages.filter(pl.col("stage").is_in(MODEL_STAGES))["flops"].fill_null(0).sum())

    def stage(self, name: str) -> dict[str, Any]:
        """One stage's row as a dict (``analysis.stage("prefill")["flops"]``); KeyError when it has none."""
        rows = self.stages.filter(pl.col("stage") == name)
        if rows.is_empty():
            raise KeyError(f"no stage {name!r}; stages: {', '.join(self.stages['stage'])}")
        return rows.row(0, named=True)


def analyze(spec: ModelSpec, inputs: Inputs, *, counters: tuple[str, ...] | None = None) -> Analysis:
    """FLOPs, bytes and parameters per stage of ``spec`` for ``inputs``.

    Parameters
    ----------
    spec
        The model (:func:`stagemfu.models.load_model_spec`).
    inputs
        The generate call: mode, crops, prompt and generated tokens, batch, dtype.
    counters
        Which counters to run, any of ``analytic``, ``torch``, ``fvcore``. None (the default) runs
        all three, and a torch-based one whose dependencies are missing gives null figures and a
        note naming the extra to install; a counter named here must run.

    Returns
    -------
    Analysis
        Stages ``vision``, ``sam``, ``clip`` or ``encoder``, ``projector`` (image models),
        ``prefill``, ``decode``, ``decode_first``, ``decode_last`` (when more than one token is
        generated).

    Raises
    ------
    ModelConfigError
        Bad inputs for this model, an unknown counter, or inputs so large that a count would not fit
        a 64-bit integer.
    MissingDependencyError
        A counter named in ``counters`` needs torch, transformers or fvcore, which are missing.
    """
    asked = counters is not None
    counters = COUNTERS if counters is None else tuple(counters)
    unknown = [c for c in counters if c not in COUNTERS]
    if unknown or not counters:
        raise ModelConfigError(f"--counters {','.join(unknown) or '(none)'}: use one or more of {', '.join(COUNTERS)}")
    shapes = resolve_shapes(spec, inputs)
    blocks = model_blocks(spec, shapes)
    analytic, byte_counts, params = stage_flops(blocks), stage_bytes(spec, shapes), stage_params(spec)
    kv = stage_kv_bytes(spec, shapes)
    _check_countable(spec, shapes, {**{f"{s} FLOPs": n for s, n in analytic.flops.items()},
                                    **{f"{s} bytes": n for s, n in byte_counts.items()},
                                    "parameters": model_params(spec)})  # fmt: skip
    results, notes = [], [RULE, *CONVENTIONS]
    for counter in COUNTERS:
        if counter not in counters:
            continue
        try:
            result = analytic if counter == "analytic" else _run_counter(counter, spec, shapes)
        except MissingDependencyError as err:
            if asked:
                raise MissingDependencyError(f"--counters {counter}: {err}") from err
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
    if spec.family.image_rule is not None:
        notes.append(
            f"{shapes.image_tokens} image tokens per sample, counted as the processor of the model counts them "
            f"({spec.family.image_rule.source})"
        )
    rows = [
        {
            "stage": stage,
            **entry,
            "bytes": byte_counts.get(stage),
            **kv.get(stage, dict.fromkeys(KV_COLUMNS, 0)),
            "params": params.get(stage),
        }  # fmt: skip
        for stage, entry in combine(results, blocks).items()
    ]
    stages = pl.DataFrame(rows, schema=STAGE_COLUMNS) if rows else pl.DataFrame(schema=STAGE_COLUMNS)
    return Analysis(spec, shapes, stages.select(list(STAGE_COLUMNS)), tuple(counters), tuple(notes))


def _sliding_window_note(spec: ModelSpec, shapes: Shapes) -> list[str]:
    """Sliding-window attention is counted over the whole context: say so when the window is shorter."""
    window = spec.dims.lm.sliding_window
    context = shapes.prompt_tokens + shapes.inputs.new_tokens - 1
    if not window or context <= window:
        return []
    return [
        f"attention is counted over the whole context (up to {context} positions); the sliding window of the model "
        f"({window}) limits what its kernels attend to and its cache keeps, so attention FLOPs and KV-cache bytes "
        "are upper bounds"
    ]


def _check_countable(spec: ModelSpec, shapes: Shapes, counts: dict[str, int]) -> None:
    """Refuse a model or inputs whose counts would not fit the int64 columns every output holds them in.

    ``counts`` are the analytic figures, exact Python integers computed before any torch-based
    counter builds tensors of these shapes (the other counters count the same work).
    """
    too_large = [(what, count) for what, count in counts.items() if count > INT64_MAX]
    if not too_large:
        return
    what, count = too_large[0]
    inputs = shapes.inputs
    raise ModelConfigError(
        f"{spec.origin} with --text-tokens {inputs.text_tokens} --new-tokens {inputs.new_tokens} --batch "
        f"{inputs.batch}: {what} would be {count:.3g}, past the 64-bit counts stagemfu keeps (9.2e18); "
        "use smaller inputs or a smaller config"
    )


def _run_counter(counter: str, spec: ModelSpec, shapes: Shapes) -> CounterResult:
    """One torch-based counter (``torch_count.py`` / ``fvcore_count.py``), imported when it runs."""
    module = importlib.import_module(f"stagemfu.analyzer.{counter}_count")
    return getattr(module, f"count_{counter}")(spec, shapes)


__all__ = ["COUNTERS", "STAGE_COLUMNS", "Analysis", "CounterResult", "analyze"]
