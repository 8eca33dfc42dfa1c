"""Calibration: proof that the report's MFU is right, on GEMMs whose FLOPs and time are known.

:func:`run_calibration` profiles :mod:`stagemfu.report.calibrate_workload` under nsys (bf16
GEMMs in NVTX ranges, timed with CUDA events); :func:`check_calibration` then reports the trace
with the workload's exact FLOPs and compares, per GEMM, the report's kernel-time MFU with
``FLOPs / (CUDA-event time × peak)``. They must agree within :data:`TOLERANCE`, and the achieved
TFLOP/s must be plausible: never above the peak, and the largest GEMM at least
:data:`MIN_LARGEST_MFU` of it (a bf16 8192³ product reaches 77-80 % on H100/H200).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from stagemfu import schemas
from stagemfu.errors import CollectError, StagemfuError
from stagemfu.postprocess import read, stage_times
from stagemfu.report import MfuReport, build_report
from stagemfu.report.flops_file import StageFlops, stage_table
from stagemfu.report.peaks import Peak, resolve_peak

TOLERANCE = 0.02
MIN_LARGEST_MFU = 0.4
EVENTS_FILE = "events.json"


@dataclass(frozen=True)
class Calibration:
    """Result of a calibration check.

    Attributes
    ----------
    gemms
        One row per GEMM range: ``range``, ``m``, ``n``, ``k``, ``repeats``, ``flops``,
        ``kernel_ns`` (from the trace), ``event_ns`` (CUDA events), ``tflops_kernel``,
        ``tflops_events``, ``mfu_kernel`` (the report's), ``mfu_events``, ``difference``
        (``mfu_kernel / mfu_events − 1``), ``agrees`` (within the tolerance), ``plausible``.
    peak
        The peak both MFUs divide by.
    device, trace
        The GPU the workload ran on, and the trace checked.
    passed
        Every GEMM agrees and is plausible.
    report
        The full report of the calibration trace.
    """

    gemms: pl.DataFrame
    peak: Peak
    device: str
    trace: Path
    passed: bool
    report: MfuReport


def run_calibration(
    out_dir: Path,
    *,
    shapes: str | None = None,
    repeats: int | None = None,
    nsys: str | None = None,
    gpu: str | None = None,
    peak_tflops: float | None = None,
) -> Calibration:
    """Profile the GEMM workload under nsys into ``out_dir``, then :func:`check_calibration` it."""
    from stagemfu.collect import collect
    from stagemfu.deps import require

    require("torch", needed_for="the calibration workload")
    out_dir = Path(out_dir)
    command = [sys.executable, "-m", "stagemfu.report.calibrate_workload", "--out", str(out_dir / EVENTS_FILE)]
    command += ["--shapes", shapes] if shapes else []
    command += ["--repeats", str(repeats)] if repeats else []
    result = collect(command, out_dir=out_dir, nsys=nsys, name="calibration")
    if result.exit_status != 0 or result.sqlite is None:
        why = "; ".join(result.notes) or f"the workload exited with status {result.exit_status}"
        raise CollectError(f"{out_dir}: calibration run failed ({why}); see {result.run_json}")
    return check_calibration(result.sqlite, out_dir / EVENTS_FILE, gpu=gpu, peak_tflops=peak_tflops)


def check_calibration(
    trace: str | Path, events: str | Path, *, gpu: str | None = None, peak_tflops: float | None = None
) -> Calibration:
    """Compare the report's kernel-time MFU of each GEMM range with its CUDA-event MFU.

    Parameters
    ----------
    trace
        The nsys export of the workload.
    events
        The workload's JSON (``stagemfu.calibration_workload/1``).
    gpu, peak_tflops
        As for ``stagemfu report``; by default the trace's GPU and its datasheet bf16 peak.
    """
    doc = _read_events(Path(events))
    gemms = pl.DataFrame(doc["gemms"], schema_overrides={"flops": pl.Int64, "event_ns": pl.Int64})
    flops = StageFlops(
        stages=stage_table([{"stage": r["range"], "flops": r["flops"], "instances": 1} for r in doc["gemms"]]),
        source=str(events),
        model="bf16 GEMM calibration",
        dtype=doc.get("dtype", "bf16"),
    )
    tr = read(trace)
    peak = resolve_peak(tr.gpus, dtype=flops.dtype, gpu=gpu, peak_tflops=peak_tflops)
    rep = build_report(stage_times(tr, within="measured"), flops, peak)
    joined = gemms.join(
        rep.stages.select(pl.col("stage").alias("range"), "kernel_ns", "tflops_kernel", "mfu_kernel"), on="range"
    )
    if joined.height != gemms.height:
        raise StagemfuError(f"{trace}: the trace lacks some GEMM ranges of {events}; were they recorded together?")
    largest = pl.col("flops") / pl.col("repeats") == (pl.col("flops") / pl.col("repeats")).max()
    checked = joined.with_columns(
        tflops_events=pl.col("flops") / pl.col("event_ns") / 1e3,
        mfu_events=pl.col("flops") / pl.col("event_ns") / (peak.tflops * 1e3),
    ).with_columns(
        difference=pl.col("mfu_kernel") / pl.col("mfu_events") - 1,
        agrees=(pl.col("mfu_kernel") / pl.col("mfu_events") - 1).abs() <= TOLERANCE,
        plausible=(pl.col("mfu_kernel") <= 1) & (~largest | (pl.col("mfu_kernel") >= MIN_LARGEST_MFU)),
    )
    passed = bool(checked["agrees"].all() and checked["plausible"].all())
    return Calibration(checked, peak, str(doc.get("device", "unknown")), Path(trace), passed, rep)


def _read_events(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StagemfuError(f"{path}: cannot read the calibration workload's output ({err})") from err
    if not isinstance(doc, dict) or doc.get("schema") != schemas.CALIBRATION_WORKLOAD or not doc.get("gemms"):
        raise StagemfuError(f"{path}: not a {schemas.CALIBRATION_WORKLOAD} document with GEMMs")
    return doc
