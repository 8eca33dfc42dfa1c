"""What-if: the analyzer's sweep read against a GPU's roofline (``stagemfu analyze --sweep ... --gpu``).

For every combination of the swept inputs and every stage: FLOPs, estimated bytes, KV cache,
arithmetic intensity and the roofline time (:mod:`.roofline`). For every combination, the whole
generation's bounds: TTFT (vision + prefill, each stage at its own roof: stages run one after the
other, so their bounds add), TPOT (the decode steps' bound over the number of steps), the whole
generation and the decode tokens per second those allow. For every combination of the inputs
other than the batch, the smallest batch at which decode's intensity reaches the GPU's ridge
point, where more sequences stop being free: found by bisection over the analyzer (decode's
intensity only grows with the batch: its FLOPs grow in proportion while the weights are read once
for all sequences), or none when it stays below the ridge up to :data:`MAX_BATCH` sequences.

Nothing here asks whether the weights and the KV cache fit in the GPU's memory: ``kv_bytes`` says
what the cache holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from stagemfu.analyzer import analyze
from stagemfu.analyzer.sweep import Sweep, combinations, sweep
from stagemfu.errors import ModelConfigError, PeakError
from stagemfu.models.presets import ModelSpec
from stagemfu.models.shapes import Inputs
from stagemfu.notebook import Summarized
from stagemfu.report.peaks import Peak
from stagemfu.report.roofline import ROOFLINE_NOTE, ridge_intensity, with_roofline

MAX_BATCH = 2**20  # sequences searched for decode's compute-bound batch
TTFT_STAGES = ("vision", "prefill")  # the analyzer's prefill is the language model alone


@dataclass(frozen=True, repr=False)  # repr and Jupyter summary: stagemfu.notebook
class WhatIf(Summarized):
    """A sweep of input shapes against a GPU's roofline.

    Attributes
    ----------
    sweep
        The analyzer's counts (:class:`stagemfu.analyzer.sweep.Sweep`).
    peak
        The GPU's peak and bandwidth; None when no GPU was named (then no roofline times).
    stages
        ``sweep.stages`` plus ``intensity``, ``roofline_ns`` and ``bound`` (:func:`.with_roofline`).
    generation
        One row per combination: the swept values, ``ttft_ns``, ``decode_ns`` (all steps),
        ``tpot_ns`` (their mean per step), ``generation_ns`` and ``decode_tokens_per_s`` (Float64),
        all roofline bounds; the decode columns are null when one token is generated.
    compute_bound
        One row per combination of the swept inputs other than ``batch``: those values and
        ``decode_batch``, the smallest batch at which decode (all steps) is compute-bound on the
        GPU, or null when it stays memory-bound up to :data:`MAX_BATCH`; then
        ``decode_intensity_max`` is the highest intensity decode reached (at the largest batch
        searched). No rows without a GPU, nor for combinations that generate one token.
    notes
        Conventions and the analyses' notes.
    """

    sweep: Sweep
    peak: Peak | None
    stages: pl.DataFrame
    generation: pl.DataFrame
    compute_bound: pl.DataFrame
    notes: tuple[str, ...]


def what_if(
    spec: ModelSpec,
    base: Inputs,
    axes: Mapping[str, Sequence[Any]],
    *,
    peak: Peak | None,
    counters: tuple[str, ...] = ("analytic",),
) -> WhatIf:
    """Sweep ``spec`` over ``axes`` (:func:`stagemfu.analyzer.sweep.sweep`) and read every stage
    against ``peak``'s roofline.

    Raises
    ------
    ModelConfigError
        A combination the model cannot take.
    PeakError
        ``peak`` has no bandwidth.
    """
    if peak is not None and not peak.bandwidth_gbs:
        raise PeakError(
            f"GPU {peak.model or peak.gpu or '(override)'}: no memory bandwidth is known, and the roofline needs it; "
            "pass --peak-bandwidth GB/S"
        )
    swept = sweep(spec, base, axes, counters=counters)
    stages = with_roofline(swept.stages, peak)
    notes = (
        [
            ROOFLINE_NOTE,
            "the roofline does not check that the weights and the KV cache (kv_bytes) fit in the GPU's memory",
        ]
        if peak is not None
        else ["no GPU named (--gpu): FLOPs, bytes and intensity only"]
    )
    return WhatIf(swept, peak, stages, _generation(stages, swept), _compute_bound(swept, peak), (*notes, *swept.notes))


def compute_bound_batch(spec: ModelSpec, inputs: Inputs, peak: Peak) -> tuple[int | None, float | None]:
    """``(batch, None)``: the smallest batch at which decode (all steps) reaches ``peak``'s ridge
    intensity; ``(None, intensity)`` when it does not up to :data:`MAX_BATCH`, with the highest
    intensity it reached; ``(None, None)`` without decode steps or a bandwidth.

    Doubling, then bisection: decode's intensity grows with the batch (FLOPs in proportion, the
    weights read once for every sequence, the MoE experts reached growing ever slower).
    """
    ridge = ridge_intensity(peak)
    if ridge is None or inputs.new_tokens < 2:
        return None, None

    def intensity(batch: int) -> float:
        row = analyze(spec, dataclasses.replace(inputs, batch=batch), counters=("analytic",)).stage("decode")
        return row["flops"] / row["bytes"]

    high, reached = 1, intensity(1)
    while reached < ridge:
        if high >= MAX_BATCH:
            return None, reached
        try:
            reached = intensity(min(2 * high, MAX_BATCH))
        except ModelConfigError:  # counts past 64 bits: a batch beyond anything a GPU holds
            return None, reached
        high = min(2 * high, MAX_BATCH)
    low = high // 2  # below the ridge (0 when batch 1 is already compute-bound)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if intensity(middle) >= ridge else (middle, high)
    return high, None


def _generation(stages: pl.DataFrame, swept: Sweep) -> pl.DataFrame:
    """Per combination: TTFT, decode, TPOT and whole-generation roofline bounds, decode tokens/s."""
    keys = list(swept.axes)

    def value(axis: str) -> pl.Expr:
        return pl.col(axis).first() if axis in keys else pl.lit(getattr(swept.base, axis))

    def stage_ns(*names: str) -> pl.Expr:
        return pl.col("roofline_ns").filter(pl.col("stage").is_in(names))

    per_point = stages.group_by("point", maintain_order=True).agg(
        *(pl.col(k).first() for k in keys),
        ttft_ns=pl.when(stage_ns(*TTFT_STAGES).null_count() == 0).then(stage_ns(*TTFT_STAGES).sum()),
        decode_ns=stage_ns("decode").first(),
        _steps=value("new_tokens") - 1,
        _batch=value("batch"),
    )
    return per_point.select(
        *keys,
        "ttft_ns",
        "decode_ns",
        tpot_ns=(pl.col("decode_ns") / pl.col("_steps")).round(0).cast(pl.Int64),
        generation_ns=pl.col("ttft_ns") + pl.col("decode_ns").fill_null(0),
        decode_tokens_per_s=pl.when(pl.col("decode_ns") > 0).then(
            pl.col("_batch") * pl.col("_steps") * 1e9 / pl.col("decode_ns")
        ),
    )


def _compute_bound(swept: Sweep, peak: Peak | None) -> pl.DataFrame:
    """Decode's compute-bound batch for every combination of the swept inputs other than the batch."""
    others = {axis: values for axis, values in swept.axes.items() if axis != "batch"}
    schema = {
        **{a: swept.stages.schema[a] for a in others},
        "decode_batch": pl.Int64,
        "decode_intensity_max": pl.Float64,
    }
    if peak is None:
        return pl.DataFrame(schema=schema)
    rows = []
    for point in combinations(others):
        batch, reached = compute_bound_batch(swept.spec, dataclasses.replace(swept.base, **point), peak)
        if batch is not None or reached is not None:  # neither: one token generated, no decode
            rows.append({**point, "decode_batch": batch, "decode_intensity_max": reached})
    return pl.DataFrame(rows, schema=schema)
