"""The roofline: the least time a stage's work can take on a GPU, and which roof sets it.

A stage that does ``flops`` FLOPs and moves ``bytes`` bytes of DRAM traffic cannot finish sooner
than the GPU needs for either (Williams, Waterman and Patterson, "Roofline: an insightful visual
performance model for multicore architectures", CACM 52(4), 2009)::

    roofline_ns = max(flops / peak FLOP/s, bytes / peak bandwidth)

It is ``compute``-bound when the first term is the larger, ``memory``-bound otherwise; the two meet
at the ridge point, an arithmetic intensity (``flops / bytes``, FLOP per byte) of peak FLOP/s over
peak bandwidth: 989.4 TFLOP/s / 3,350 GB/s = 295 FLOP/B for an H100 SXM in bf16. The peak is the
dense datasheet figure for the dtype (:mod:`.peaks`); the bytes are the analyzer's estimate
(:mod:`stagemfu.analyzer.memory`), so the roofline time is as good as that estimate: a lower bound
for the traffic it counts, not a prediction. ``roofline_efficiency`` = roofline time / kernel
time: 1 means the kernels ran at the roof, 0.1 that they took ten times what the roof allows.

Pure polars expressions over ``flops`` and ``bytes`` columns, used by the report's join (per stage
and per decode step) and by the what-if sweep of ``stagemfu analyze --sweep`` (:mod:`.what_if`).
"""

from __future__ import annotations

import polars as pl

from stagemfu.report.peaks import Peak

BOUNDS = ("compute", "memory")
ROOFLINE_NOTE = (
    "roofline: a stage takes at least max(FLOPs / peak FLOP/s, bytes / peak bandwidth) (Williams, Waterman, "
    "Patterson 2009), with the dense peak of the dtype and estimated bytes (the analyzer's: weights read per pass, "
    "KV cache read and written, activations once per matrix product; no cache reuse, no fusion), so it is a bound "
    "for the traffic counted, not a prediction; roofline_efficiency = roofline time / kernel time, 1 at the roof"
)


def ridge_intensity(peak: Peak) -> float | None:
    """FLOP per byte where the compute roof meets the bandwidth roof (None without a bandwidth)."""
    return peak.tflops * 1e3 / peak.bandwidth_gbs if peak.bandwidth_gbs else None


def with_roofline(frame: pl.DataFrame, peak: Peak | None) -> pl.DataFrame:
    """``frame`` (with ``flops`` and ``bytes`` columns) plus the roofline columns.

    Returns
    -------
    pl.DataFrame
        Added: ``intensity`` (FLOP per byte; null without bytes or with none moved),
        ``roofline_ns`` (Int64; null without bytes, a peak or its bandwidth) and ``bound``
        (``compute`` or ``memory``, null with ``roofline_ns``).
    """
    flops, moved = pl.col("flops").cast(pl.Float64), pl.col("bytes").cast(pl.Float64)
    intensity = pl.when(moved > 0).then(flops / moved).alias("intensity")
    if peak is None or not peak.bandwidth_gbs:
        nothing = [pl.lit(None, pl.Int64).alias("roofline_ns"), pl.lit(None, pl.Utf8).alias("bound")]
        return frame.with_columns(intensity, *nothing)
    compute_ns = flops / (peak.tflops * 1e3)  # 1 TFLOP/s = 1e3 FLOP per ns
    memory_ns = moved / peak.bandwidth_gbs  # 1 GB/s = 1 byte per ns
    known = flops.is_not_null() & moved.is_not_null()
    return frame.with_columns(
        intensity,
        pl.when(known).then(pl.max_horizontal(compute_ns, memory_ns).round(0).cast(pl.Int64)).alias("roofline_ns"),
        pl.when(known)
        .then(pl.when(compute_ns >= memory_ns).then(pl.lit(BOUNDS[0])).otherwise(pl.lit(BOUNDS[1])))
        .alias("bound"),
    )
