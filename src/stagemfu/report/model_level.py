"""Model-level MFU and the latency view serving engineers read (TTFT, TPOT, tokens/s).

Generation is prefill (which makes the first token) then one decode step per further token.
Vision runs inside the prefill range, so the model's FLOPs and times are prefill + decode and
vision is never added a second time; a trace whose vision range stands outside prefill adds it
once. Latencies are per generation, each on wall time (what a user waits) and on GPU time (busy:
what the GPU spent, the floor a faster host would reach).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from stagemfu.postprocess.stages import StageTimes
from stagemfu.report.join import BASES, Joined
from stagemfu.report.peaks import Peak

NS_PER_S = 1e9
TPOT_QUANTILES = ("p50", "p90", "p99")


def model_totals(joined: Joined, peak: Peak) -> dict[str, Any] | None:
    """FLOPs, time on each base and MFU on each base of the whole generation.

    Returns
    -------
    dict or None
        ``stages`` (the stages summed), ``flops``, ``<base>_ns`` and ``mfu_<base>`` for wall,
        span, busy and kernel; None when prefill or decode is missing.
    """
    names = ["prefill", "decode"] if joined.vision_in_prefill else ["vision", "prefill", "decode"]
    rows = joined.stages.filter(pl.col("stage").is_in(names))
    if not {"prefill", "decode"} <= set(rows["stage"]):
        return None
    totals = rows.select(pl.col("flops", *[f"{b}_ns" for b in BASES]).sum()).row(0, named=True)
    return {
        "stages": rows["stage"].to_list(),
        **totals,
        **{f"mfu_{b}": _ratio(totals["flops"], totals[f"{b}_ns"] * peak.tflops * 1e3) for b in BASES},
    }


def latency(st: StageTimes, joined: Joined, *, batch: int = 1) -> dict[str, Any] | None:
    """Time to first token, time per output token and decode throughput, on wall and GPU time.

    Returns
    -------
    dict or None
        ``generations``, ``ttft_wall_ns``, ``ttft_gpu_ns`` (mean per generation of prefill, plus
        vision when it runs outside prefill), ``tpot_wall_<q>_ns`` and ``tpot_gpu_<q>_ns`` for
        p50, p90, p99 over decode steps, ``decode_tokens_per_s_wall`` and
        ``decode_tokens_per_s_gpu`` (``batch`` tokens per step); None without a prefill range.
    """
    ranges = st.ranges.group_by("name").agg(pl.col("instances", "wall_ns", "busy_ns").sum())
    by_name = {r["name"]: r for r in ranges.iter_rows(named=True)}
    if "prefill" not in by_name:
        return None
    first = ["prefill"] if joined.vision_in_prefill or "vision" not in by_name else ["vision", "prefill"]
    generations = by_name["prefill"]["instances"]
    out: dict[str, Any] = {
        "generations": generations,
        "ttft_wall_ns": round(sum(by_name[n]["wall_ns"] for n in first) / generations),
        "ttft_gpu_ns": round(sum(by_name[n]["busy_ns"] for n in first) / generations),
    }
    decode = by_name.get("decode")
    if decode is None:
        return out
    stats = st.instance_stats.filter(pl.col("name") == "decode")
    for base, metric in (("wall", "wall_ns"), ("gpu", "busy_ns")):
        row = stats.filter(pl.col("metric") == metric)
        for q in TPOT_QUANTILES:
            out[f"tpot_{base}_{q}_ns"] = int(row[f"{q}_ns"].sum()) if row.height == 1 else None
    tokens = batch * decode["instances"]
    out["decode_tokens_per_s_wall"] = _ratio(tokens * NS_PER_S, decode["wall_ns"])
    out["decode_tokens_per_s_gpu"] = _ratio(tokens * NS_PER_S, decode["busy_ns"])
    return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None
