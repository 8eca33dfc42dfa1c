"""Views of a :class:`~stagemfu.report.calibrate.Calibration`: terminal table, Markdown (for docs/), JSON."""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.console import RenderableType

from stagemfu import schemas
from stagemfu.report.calibrate import MIN_LARGEST_MFU, TOLERANCE, Calibration
from stagemfu.report.render.markdown import markdown_cell, markdown_table
from stagemfu.report.render.terminal import terminal_document

NS_PER_MS = 1e6


def gemm_rows(cal: Calibration) -> pl.DataFrame:
    g = cal.gemms
    return pl.DataFrame(
        {
            "range": g["range"],
            "repeats": g["repeats"],
            "TFLOP": g["flops"] / 1e12,
            "kernel ms": g["kernel_ns"] / NS_PER_MS,
            "event ms": g["event_ns"] / NS_PER_MS,
            "TFLOP/s kernel": g["tflops_kernel"],
            "TFLOP/s events": g["tflops_events"],
            "MFU kernel %": g["mfu_kernel"] * 100,
            "MFU events %": g["mfu_events"] * 100,
            "difference %": g["difference"] * 100,
            "agrees": g["agrees"],
            "plausible": g["plausible"],
        }
    )


def summary_lines(cal: Calibration) -> list[str]:
    p = cal.peak
    verdict = "PASSED" if cal.passed else "FAILED"
    return [
        f"calibration {verdict}: the report's kernel-time MFU of every GEMM is within {TOLERANCE:.0%} of "
        f"FLOPs / (CUDA-event time x peak), and the largest GEMM reaches at least {MIN_LARGEST_MFU:.0%} of peak",
        f"device {cal.device}; trace {cal.trace}",
        f"peak {p.tflops:,.1f} TFLOP/s dense {p.dtype} ({p.source}: {p.model or p.gpu}; {p.reference})",
    ]


def terminal_view(cal: Calibration) -> RenderableType:
    lines = summary_lines(cal)
    style = "bold green" if cal.passed else "bold red"
    return terminal_document(lines, [("GEMMs", gemm_rows(cal))], (), head_style=style)


def markdown_view(cal: Calibration) -> str:
    out = ["# stagemfu calibration", ""] + [f"- {markdown_cell(line)}" for line in summary_lines(cal)]
    out += ["", markdown_table(gemm_rows(cal))]
    return "\n".join(out) + "\n"


def calibration_document(cal: Calibration) -> dict[str, Any]:
    return {
        "schema": schemas.CALIBRATION,
        "passed": cal.passed,
        "tolerance": TOLERANCE,
        "device": cal.device,
        "trace": str(cal.trace),
        "peak": {"gpu": cal.peak.gpu, "dtype": cal.peak.dtype, "tflops": cal.peak.tflops, "source": cal.peak.source},
        "gemms": cal.gemms.to_dicts(),
    }
