"""The metrics of a range instance, in one registry: how each is computed, combined and shown.

Every number a range instance gets (wall, span, busy, kernel time, counts, communication) is a
:class:`Metric`: its column, unit and label; how it is reduced over the operations of one range
(a segment of (range, operation) pairs, :class:`Segments`); how the values of time-ordered
batches of operations combine (``merge``: batches are cut where no operation runs, so sums and
unions add, a first start is a minimum, a last end a maximum); or how it derives from other
metrics after merging (span). Attribution, the stage tables, the many-trace spread and the
renderers iterate :data:`METRICS` instead of listing columns, so a new metric is one entry, and
one that does not add across batches cannot be added without saying how it merges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import polars as pl

from stagemfu.postprocess.intervals import masked_segment_union, segment_union


@dataclass(frozen=True)
class Segments:
    """The operations of several ranges, grouped by range: segment k starts at ``bounds[k]``.

    Attributes
    ----------
    bounds
        First row of each segment.
    start, end
        Each operation's interval (ns).
    is_kernel
        Kernels and CUDA graph launches (their time counts as kernel time).
    new_call
        The first operation of each launch not counted in an earlier batch: a GPU op is one launch.
    is_comm
        Communication kernels (NCCL...), or None when the trace has none.
    """

    bounds: np.ndarray
    start: np.ndarray
    end: np.ndarray
    is_kernel: np.ndarray
    new_call: np.ndarray
    is_comm: np.ndarray | None

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.bounds)

    @cached_property
    def duration(self) -> np.ndarray:
        return self.end - self.start

    def union(self, mask: np.ndarray) -> np.ndarray:
        """Busy time of the operations where ``mask`` holds, per segment."""
        return masked_segment_union(self.bounds, self.start, self.end, mask)

    @cached_property
    def comm_busy(self) -> np.ndarray:
        return self.union(self.is_comm) if self.is_comm is not None else self.zeros

    @cached_property
    def zeros(self) -> np.ndarray:
        return np.zeros(len(self.bounds), dtype=np.int64)

    def overlap(self) -> np.ndarray:
        """Time a communication kernel and another kernel both ran: busy(comm) + busy(other kernels)
        - busy(all kernels), inclusion-exclusion on three unions."""
        if self.is_comm is None:  # no communication kernel in the trace: skip three unions
            return self.zeros
        kernel = self.is_kernel
        return self.comm_busy + self.union(kernel & ~self.is_comm) - self.union(kernel)


@dataclass(frozen=True)
class Metric:
    """One number per range instance.

    Attributes
    ----------
    name
        Its column, with its unit (``busy_ns``, ``gpu_ops``).
    label
        Its name for people ("busy"); renderers show ``{label} ms`` for times.
    help
        One sentence: what it measures.
    merge
        How the values of time-ordered batches combine: "sum", "min" or "max".
    reduce
        Its value for each segment of operations; None for a metric not computed from the
        (range, operation) pairs (wall time, exclusive busy) or derived from others.
    derive
        Its value from other metrics' columns, after merging (span from first start and last end).
    summed
        Instances add up to a per-stage, per-path and per-process total (a first start does not).
    stats
        Instance statistics (first, mean, percentiles) are given for it.
    spread
        The many-trace view gives its per-trace minimum, median and maximum; a straggler metric.
    totals
        Given for all GPU work of the trace and for the work launched outside every range.
    devices
        Given per device of each stage.
    """

    name: str
    label: str
    help: str
    merge: Literal["sum", "min", "max"] = "sum"
    reduce: Callable[[Segments], np.ndarray] | None = None
    derive: Callable[[], pl.Expr] | None = None
    summed: bool = True
    stats: bool = False
    spread: bool = False
    totals: bool = False
    devices: bool = False

    def merged(self) -> pl.Expr:
        """The expression combining this metric's column over the batches' rows."""
        column = pl.col(self.name)
        return {"sum": column.sum, "min": column.min, "max": column.max}[self.merge]()


def _first_start(s: Segments) -> np.ndarray:
    return np.minimum.reduceat(s.start, s.bounds)


def _last_end(s: Segments) -> np.ndarray:
    return np.maximum.reduceat(s.end, s.bounds)


def _span() -> pl.Expr:
    return (pl.col("gpu_end_ns") - pl.col("gpu_start_ns")).fill_null(0)


def _busy(s: Segments) -> np.ndarray:
    return segment_union(s.bounds, s.start, s.end)


def _kernel_time(s: Segments) -> np.ndarray:
    return s.sum(np.where(s.is_kernel, s.duration, 0))


def _comm_time(s: Segments) -> np.ndarray:
    return s.sum(np.where(s.is_comm, s.duration, 0)) if s.is_comm is not None else s.zeros


def _comm_busy(s: Segments) -> np.ndarray:
    return s.comm_busy


def _launches(s: Segments) -> np.ndarray:
    return s.sum(s.new_call.astype(np.int64))


def _kernels(s: Segments) -> np.ndarray:
    return s.sum(s.is_kernel.astype(np.int64))


# In the order the tables show them.
METRICS = (
    Metric("gpu_start_ns", "first op start", "start of the first GPU op", "min", _first_start, summed=False),
    Metric("gpu_end_ns", "last op end", "end of the last GPU op", "max", _last_end, summed=False),
    Metric("wall_ns", "wall", "end minus start of the range: CPU time", stats=True, spread=True),
    Metric(
        "span_ns",
        "span",
        "first GPU op start to last GPU op end (nsys's projected time)",
        derive=_span,
        stats=True,
        spread=True,
        totals=True,
        devices=True,
    ),
    Metric(
        "busy_ns",
        "busy",
        "length of the union of the GPU op intervals",
        reduce=_busy,
        stats=True,
        spread=True,
        totals=True,
        devices=True,
    ),
    Metric("exclusive_busy_ns", "excl", "busy time of the GPU ops that belong to no child range"),
    Metric(
        "kernel_ns", "kernel", "sum of kernel durations", reduce=_kernel_time, spread=True, totals=True, devices=True
    ),
    Metric("comm_ns", "comm", "sum of communication kernel durations", reduce=_comm_time, spread=True, devices=True),
    Metric("comm_busy_ns", "comm busy", "union of the communication kernel intervals", reduce=_comm_busy, devices=True),
    Metric(
        "overlap_ns",
        "overlap",
        "time communication and other kernels ran at once on one device",
        reduce=Segments.overlap,
        devices=True,
    ),
    Metric(
        "gpu_ops",
        "gpu ops",
        "GPU operations launched (a CUDA graph launch is one)",
        reduce=_launches,
        totals=True,
        devices=True,
    ),
    Metric("kernels", "kernels", "kernels run", reduce=_kernels, totals=True),
)
BY_NAME = {m.name: m for m in METRICS}
REDUCED = tuple(m for m in METRICS if m.reduce is not None)  # computed from (range, operation) pairs
REDUCED_SCHEMA = {m.name: pl.Int64 for m in REDUCED}
SUMMED = [m.name for m in METRICS if m.summed]
STATS = [m.name for m in METRICS if m.stats]
SPREAD = [m.name for m in METRICS if m.spread]
DEVICES = [m.name for m in METRICS if m.devices]
TOTALS = [m.name for m in METRICS if m.totals]


def reduce_segments(segments: Segments, metrics: tuple[Metric, ...] = REDUCED) -> dict[str, np.ndarray]:
    """Every metric's value per segment."""
    return {m.name: m.reduce(segments) for m in metrics if m.reduce is not None}


def merge(frames: list[pl.DataFrame], keys: list[str]) -> pl.DataFrame:
    """Combine the rows of time-ordered batches per key, each metric by its merge rule (others summed)."""
    if len(frames) == 1:
        return frames[0]
    merged = pl.concat(frames)
    aggs = [BY_NAME[c].merged() if c in BY_NAME else pl.col(c).sum() for c in merged.columns if c not in keys]
    return merged.group_by(keys).agg(aggs) if keys else merged.select(aggs)


def derived() -> list[pl.Expr]:
    """The derived metrics' columns, from the merged ones."""
    return [m.derive().alias(m.name) for m in METRICS if m.derive is not None]
