"""The one shape every FLOP counter returns, so comparing counters is a join by stage name."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CounterResult:
    """FLOPs per stage from one counter (analytic, torch's FlopCounterMode or fvcore).

    ``flops`` maps a stage name (``sam``, ``encoder``, ``prefill``, ``decode_first``, ...) to an
    integer count at 2 FLOPs per multiply-accumulate. A stage the counter could not measure is
    absent, never 0. ``notes`` say what the counter left out, how a depth-reduced run was scaled
    back to the full model, and any convention that differs from the analytic count.
    """

    counter: str
    flops: dict[str, int]
    notes: tuple[str, ...] = field(default=())
