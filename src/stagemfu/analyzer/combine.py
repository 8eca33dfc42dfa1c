"""Pick one FLOP count per stage from the three counters, and explain where they disagree.

Rule for ``flops``: the analytic count when it covers the stage, else torch's counter, else
fvcore's. The analytic count is complete by construction for every stage of the models it knows
and does not depend on how transformers dispatches a kernel; torch's ``FlopCounterMode`` and fvcore
measure what one forward of the implementation calls and serve as checks. Each counter that differs
from the chosen count by more than ``TOLERANCE`` gets a note on that stage, with the known cause
whose size matches the difference (within ``MATCH``), else "no known cause".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import combinations

from stagemfu.analyzer.counter_result import CounterResult
from stagemfu.analyzer.formulas import attention_groups, attention_scores, swiglu_mlp
from stagemfu.models.blocks import Block, vision_parts
from stagemfu.models.shapes import STAGES

PREFERENCE = ("analytic", "torch", "fvcore")
TOLERANCE = 0.02  # disagreements above 2 % of the chosen count are noted
MATCH = 0.005  # a cause explains a difference when what is left is within 0.5 %


def _routed_experts(block: Block) -> int:
    if block.kind != "moe":
        return 0
    s = block.sizes
    return block.repeat * s["top_k"] * swiglu_mlp(s["tokens"], s["hidden"], s["intermediate"])


def _attention_kernel(block: Block) -> int:
    s = block.sizes
    if block.kind == "attention_scores":
        return block.repeat * attention_scores(**s)
    if block.kind == "clip_layer":
        return block.repeat * attention_scores(s["tokens"], s["tokens"], s["heads"], s["hidden"] // s["heads"])
    if block.kind == "sam_layer":
        groups, rows, cols = attention_groups(s["height"], s["width"], s["window"])
        head_dim = s["hidden"] // s["heads"]
        return block.repeat * groups * attention_scores(rows * cols, rows * cols, s["heads"], head_dim)
    return 0


def _lm_head(block: Block) -> int:
    s = block.sizes
    return 2 * s["tokens"] * s["hidden"] * s["vocab"] if block.kind == "lm_head" else 0


# Known reasons a measured count misses part of the analytic one: (what, FLOPs of that part of a block).
KNOWN_GAPS: tuple[tuple[str, Callable[[Block], int]], ...] = (
    ("the routed MoE experts (run through grouped_mm, which the torch counter does not see)", _routed_experts),
    ("the attention kernels (scaled_dot_product_attention, for which fvcore has no handle)", _attention_kernel),
    ("the lm_head (a counter that ran the full-logits forward or skipped the head)", _lm_head),
)


def combine(results: Iterable[CounterResult], blocks: tuple[Block, ...]) -> dict[str, dict]:
    """One entry per stage a counter measured: the chosen ``flops``, each counter's figure, notes.

    Parameters
    ----------
    results
        The counters' results (any subset of analytic, torch, fvcore).
    blocks
        The analytic blocks, used to size the known causes of a disagreement.

    Returns
    -------
    dict
        Stage -> ``{"flops", "flops_analytic", "flops_torch", "flops_fvcore", "notes"}``; a counter
        without a figure for the stage is None.
    """
    by_counter = {result.counter: result.flops for result in results}
    out = {}
    for stage in _stage_order(by_counter):
        figures = {counter: _count(by_counter.get(counter, {}).get(stage)) for counter in PREFERENCE}
        chosen_by = next(c for c in PREFERENCE if figures[c] is not None)  # listed stages have one
        chosen = figures[chosen_by]
        notes = [] if chosen_by == PREFERENCE[0] else [f"flops from the {chosen_by} counter (no analytic count)"]
        if chosen:  # a zero count leaves nothing to take a share of
            gaps = _gaps(stage, blocks)
            notes += [
                _disagreement(counter, value, chosen, chosen_by, gaps)
                for counter, value in figures.items()
                if value is not None and counter != chosen_by and abs(value - chosen) > TOLERANCE * chosen
            ]
        out[stage] = {"flops": chosen, **{f"flops_{c}": v for c, v in figures.items()}, "notes": notes}
    return out


def _count(value: float | None) -> int | None:
    """Counts are integers (fvcore sizes einsums from numpy's contraction path, in fractions)."""
    return None if value is None else round(value)


def _stage_order(by_counter: dict[str, dict[str, int]]) -> list[str]:
    seen = {stage for flops in by_counter.values() for stage in flops}
    return [stage for stage in STAGES if stage in seen] + sorted(seen - set(STAGES))


def _gaps(stage: str, blocks: tuple[Block, ...]) -> list[tuple[str, int]]:
    members = vision_parts(blocks) if stage == "vision" else (stage,)
    sized = [(what, sum(size(b) for b in blocks if b.stage in members)) for what, size in KNOWN_GAPS]
    return [(what, flops) for what, flops in sized if flops]


def _disagreement(counter: str, value: int, chosen: int, chosen_by: str, gaps: list[tuple[str, int]]) -> str:
    diff = value - chosen
    head = f"flops_{counter} is {100 * diff / chosen:+.1f} % off the {chosen_by} count"
    for size in range(1, len(gaps) + 1):
        for subset in combinations(gaps, size):
            missing = sum(flops for _, flops in subset)
            if abs(diff + missing) <= MATCH * chosen:
                causes = " and ".join(f"{what} ({flops / 1e9:.3g} GFLOP)" for what, flops in subset)
                return f"{head}: it leaves out {causes}; the rest agrees within {100 * MATCH:g} %"
    return f"{head}: no known cause matches ({diff / 1e9:+.3g} GFLOP); see the notes of the {counter} counter"
