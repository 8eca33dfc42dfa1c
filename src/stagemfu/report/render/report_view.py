"""Human-readable views of an :class:`MfuReport`: rich terminal tables and a Markdown document.

Both show the same titled tables: MFU per stage (kernel next to wall), the whole generation,
latency, decode steps, FLOP counters, then diagnosis lines and notes. Times print in ms, FLOPs in
GFLOP, MFU/MBU and shares in percent. Trace strings go through :mod:`.text` first.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.console import RenderableType

from stagemfu.report import MfuReport
from stagemfu.report.flops_file import SOURCE_KINDS
from stagemfu.report.render.markdown import markdown_document
from stagemfu.report.render.postprocess_view import IDLE, ms_columns
from stagemfu.report.render.terminal import terminal_document
from stagemfu.report.render.text import one_line
from stagemfu.report.render.view import DEFAULT_VIEW, TableView

NS_PER_MS = 1e6
FLOPS_PER_GFLOP = 1e9
STEPS_SHOWN = 5  # decode steps shown at each end of a long generation
COUNTERS = ("analytic", "torch", "fvcore")
SOURCE_LABELS = {"file": "file", "ops": "op ranges", "counted": "run-time count", "analyzer": "analyzer"}
RUN_FIELDS = ("model", "inputs", "command", "started_at", "exit_status")  # of run.json, in the summary


def stage_rows(rep: MfuReport) -> pl.DataFrame:
    """Per stage: FLOPs (and, counted from op ranges, the share of kernel time they cover), times,
    idle share, kernel TFLOP/s and MFU on kernel, busy and wall time, MBU."""
    s = rep.stages
    covered = "flops_coverage" in s.columns and s["flops_coverage"].null_count() < s.height
    return pl.DataFrame(
        {
            "stage": s["stage"],
            "inst": s["instances"],
            "GFLOP": s["flops"] / FLOPS_PER_GFLOP,
            **({"FLOP cover %": s["flops_coverage"] * 100} if covered else {}),
            **ms_columns(s, "wall", "busy", "kernel"),
            IDLE: s["idle_share"] * 100,
            "TFLOP/s kernel": s["tflops_kernel"],
            **_mfu_columns(s, "kernel", "busy", "wall"),
        }
    )


def roofline_rows(rep: MfuReport) -> pl.DataFrame:
    """Per stage: which roof bounds it, its intensity and estimated bytes, the roofline time beside the
    kernel and wall time, and the roofline time as a share of each; empty when no stage has a roofline."""
    s = rep.stages
    if s["roofline_ns"].null_count() == s.height:
        return pl.DataFrame()
    return s.select(
        "stage",
        pl.col("roofline_bound").alias("bound"),
        pl.col("intensity").alias("FLOP/B"),
        (pl.col("bytes") / 1e9).alias("GB (est.)"),
        (pl.col("roofline_ns") / NS_PER_MS).alias("roofline ms"),
        (pl.col("kernel_ns") / NS_PER_MS).alias("kernel ms"),
        (pl.col("wall_ns") / NS_PER_MS).alias("wall ms"),
        (pl.col("roofline_efficiency") * 100).alias("roofline/kernel %"),
        pl.when(pl.col("wall_ns") > 0).then(pl.col("roofline_ns") / pl.col("wall_ns") * 100).alias("roofline/wall %"),
    )


def model_rows(rep: MfuReport) -> pl.DataFrame:
    m = rep.model
    if m is None:
        return pl.DataFrame()
    return pl.DataFrame(
        {
            "stages": [" + ".join(m["stages"])],
            "GFLOP": [m["flops"] / FLOPS_PER_GFLOP],
            **{f"{b} ms": [m[f"{b}_ns"] / NS_PER_MS] for b in ("wall", "span", "busy", "kernel")},
            **{f"MFU {b} %": [_pct(m[f"mfu_{b}"])] for b in ("kernel", "busy", "span", "wall")},
        }
    )


def latency_rows(rep: MfuReport) -> pl.DataFrame:
    """TTFT, TPOT quantiles (ms) and decode tokens/s, each on wall and GPU (busy) time."""
    lat = rep.latency
    if lat is None:
        return pl.DataFrame()
    rows = [("TTFT ms (vision + prefill)", _ms(lat["ttft_wall_ns"]), _ms(lat["ttft_gpu_ns"]))]
    if "decode_tokens_per_s_wall" in lat:
        rows += [
            (f"TPOT {q} ms", _ms(lat[f"tpot_wall_{q}_ns"]), _ms(lat[f"tpot_gpu_{q}_ns"])) for q in ("p50", "p90", "p99")
        ]
        rows.append(("decode tokens/s", lat["decode_tokens_per_s_wall"], lat["decode_tokens_per_s_gpu"]))
    return pl.DataFrame(rows, schema={"metric": pl.Utf8, "wall": pl.Float64, "GPU (busy)": pl.Float64}, orient="row")


def decode_rows(rep: MfuReport) -> pl.DataFrame:
    """Decode steps (the first and last few of a long generation): times, kernel TFLOP/s, MFU."""
    d = rep.decode_steps
    n = d.height
    if n > 2 * STEPS_SHOWN:
        d = d.filter((pl.int_range(pl.len()) < STEPS_SHOWN) | (pl.int_range(pl.len()) >= n - STEPS_SHOWN))
    return pl.DataFrame(
        {
            "gen": d["generation"],
            "step": d["step"],
            **ms_columns(d, "wall", "busy", "kernel"),
            "GFLOP": d["flops"] / FLOPS_PER_GFLOP,
            **_mfu_columns(d, "kernel", "wall"),
        }
    )


def counter_rows(rep: MfuReport) -> pl.DataFrame:
    """Each FLOP counter's figure per stage and their spread, when the FLOPs came from the analyzer."""
    s = rep.stages
    cols = [f"flops_{c}" for c in COUNTERS]
    if all(s[c].null_count() == s.height for c in cols):
        return pl.DataFrame()
    spread = (pl.max_horizontal(cols) - pl.min_horizontal(cols)) / pl.col("flops")
    return s.select(
        "stage",
        (pl.col("flops") / FLOPS_PER_GFLOP).alias("used GFLOP"),
        *[(pl.col(f"flops_{c}") / FLOPS_PER_GFLOP).alias(f"{c} GFLOP") for c in COUNTERS],
        (spread * 100).alias("spread %"),
    )


def source_rows(rep: MfuReport) -> pl.DataFrame:
    """Each source's FLOPs per stage (file, op ranges, run-time count, analyzer) when there are several."""
    s = rep.stages
    present = [k for k in SOURCE_KINDS if f"flops_{k}" in s.columns and s[f"flops_{k}"].null_count() < s.height]
    if len(present) < 2:
        return pl.DataFrame()
    spread = (
        pl.max_horizontal(f"flops_{k}" for k in present) - pl.min_horizontal(f"flops_{k}" for k in present)
    ) / pl.col("flops")
    return s.select(
        "stage",
        *[(pl.col(f"flops_{k}") / FLOPS_PER_GFLOP).alias(f"{SOURCE_LABELS[k]} GFLOP") for k in present],
        (spread * 100).alias("spread %"),
    )


def uncounted_rows(rep: MfuReport) -> pl.DataFrame:
    """With FLOPs from op ranges: per stage, the ops whose kernels no formula covered, largest first."""
    u = rep.uncounted_ops
    if u.is_empty():
        return pl.DataFrame()
    return pl.DataFrame(
        {
            "stage": u["stage"],
            "op": u["op"],
            "kernel ms": u["kernel_ns"] / NS_PER_MS,
            "% of kernel": u["kernel_share"] * 100,
        }
    )


def summary_lines(rep: MfuReport) -> list[str]:
    p, sf, tr = rep.peak, rep.flops, rep.times.trace
    bandwidth = f", {p.bandwidth_gbs:,.0f} GB/s" if p.bandwidth_gbs else ", bandwidth unknown (no MBU)"
    lines = [
        f"trace {tr.path} ({tr.origin}); GPU {p.gpu or 'unknown'}"
        + (f" ({tr.gpus.height} in the trace; the peak is one GPU's)" if tr.gpus.height > 1 else ""),
        f"peak {p.tflops:,.1f} TFLOP/s dense {p.dtype}{bandwidth} ({p.source}: {p.model or p.gpu or '-'}; "
        f"{p.reference})",
        f"FLOPs from {sf.source}" + (f" (model {sf.model})" if sf.model else ""),
    ]
    if rep.times.within:
        lines.append(f"times of the range instances within {one_line(rep.times.within, 48)!r}")
    shown = {k: rep.run[k] for k in RUN_FIELDS if rep.run.get(k) is not None}
    if shown:
        lines.append("run: " + "; ".join(f"{k} {_plain(v)}" for k, v in shown.items()))
    return lines


def diagnosis_lines(rep: MfuReport) -> list[str]:
    return [f"{s}: {d}" for s, d in zip(rep.stages["stage"], rep.stages["diagnosis"])]


def sections(rep: MfuReport) -> list[tuple[str, pl.DataFrame]]:
    """The titled tables both views print, empty ones left out."""
    parts = [
        ("MFU per stage (kernel time vs wall time)", stage_rows(rep)),
        (
            "Roofline per stage (the least time the GPU's peak and bandwidth allow, vs kernel and wall time)",
            roofline_rows(rep),
        ),
        ("Whole generation (vision runs inside prefill and is counted once)", model_rows(rep)),
        ("Latency per generation", latency_rows(rep)),
        (f"Decode steps ({rep.decode_steps.height})", decode_rows(rep)),
        ("FLOP counters", counter_rows(rep)),
        ("FLOPs by source", source_rows(rep)),
        ("Kernel time outside counted ops (top per stage)", uncounted_rows(rep)),
    ]
    return [(title, frame) for title, frame in parts if frame.height]


def terminal_view(rep: MfuReport, *, view: TableView = DEFAULT_VIEW) -> RenderableType:
    diagnosis = [("Diagnosis", diagnosis_lines(rep))]
    return terminal_document(
        summary_lines(rep), sections(rep), rep.notes, lists=diagnosis, warnings=rep.warnings, view=view
    )


def markdown_view(rep: MfuReport, *, view: TableView = DEFAULT_VIEW) -> str:
    return markdown_document(
        "stagemfu report",
        summary_lines(rep),
        sections(rep),
        lists=[("Diagnosis", diagnosis_lines(rep))],
        notes=rep.notes,
        warnings=rep.warnings,
        view=view,
    )


def _mfu_columns(frame: pl.DataFrame, *bases: str) -> dict[str, pl.Series]:
    """``MFU {base} %`` for each base, then ``MBU %``: stage and decode-step tables end the same way."""
    return {**{f"MFU {b} %": frame[f"mfu_{b}"] * 100 for b in bases}, "MBU %": frame["mbu"] * 100}


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _ms(ns: Any) -> float | None:
    return None if ns is None else ns / NS_PER_MS


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100
