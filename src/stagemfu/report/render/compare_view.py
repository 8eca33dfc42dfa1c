"""Views of a :class:`~stagemfu.report.compare.Comparison`: terminal tables, Markdown and JSON data.

Times print in ms, changes in percent (B against A), MFU and its deltas in percentage points.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.console import RenderableType

from stagemfu import schemas
from stagemfu.report.compare import Comparison
from stagemfu.report.join import BASES
from stagemfu.report.render.markdown import markdown_document
from stagemfu.report.render.terminal import terminal_document
from stagemfu.report.render.view import DEFAULT_VIEW, TableView

NS_PER_MS = 1e6


def time_rows(cmp: Comparison) -> pl.DataFrame:
    """Per stage and base: time on A and B (ms) and the change in percent."""
    s = cmp.stages
    out: dict[str, Any] = {"stage": s["stage"]}
    for base in BASES:
        out[f"{base} ms A"] = s[f"{base}_ns_a"] / NS_PER_MS
        out[f"{base} ms B"] = s[f"{base}_ns_b"] / NS_PER_MS
        out[f"{base} change %"] = s[f"{base}_change"] * 100
    return pl.DataFrame(out)


def mfu_rows(cmp: Comparison) -> pl.DataFrame:
    """Per stage and base: MFU on A and B and the difference, all in percent (points)."""
    s = cmp.stages
    out: dict[str, Any] = {"stage": s["stage"]}
    for base in BASES:
        out[f"MFU {base} % A"] = s[f"mfu_{base}_a"] * 100
        out[f"MFU {base} % B"] = s[f"mfu_{base}_b"] * 100
        out[f"{base} Δ % pts"] = s[f"mfu_{base}_delta"] * 100
    return pl.DataFrame(out)


def kernel_rows(cmp: Comparison) -> pl.DataFrame:
    k = cmp.kernels
    return pl.DataFrame(
        {
            "stage": k["stage"],
            "kernel": k["kernel"],
            "ms A": k["total_ns_a"] / NS_PER_MS,
            "ms B": k["total_ns_b"] / NS_PER_MS,
            "Δ ms": k["delta_ns"] / NS_PER_MS,
        }
    )


def sections(cmp: Comparison) -> list[tuple[str, pl.DataFrame]]:
    parts = [
        ("Time per stage (B against A)", time_rows(cmp)),
        ("MFU per stage", mfu_rows(cmp)),
        ("Kernels whose time changed most (from each report's top kernels per stage)", kernel_rows(cmp)),
    ]
    return [(title, frame) for title, frame in parts if frame.height]


def header_lines(cmp: Comparison) -> list[str]:
    return [f"A: {cmp.a}", f"B: {cmp.b}"]


def terminal_view(cmp: Comparison, *, view: TableView = DEFAULT_VIEW) -> RenderableType:
    return terminal_document(header_lines(cmp), sections(cmp), cmp.notes, view=view)


def markdown_view(cmp: Comparison, *, view: TableView = DEFAULT_VIEW) -> str:
    return markdown_document("stagemfu compare", header_lines(cmp), sections(cmp), notes=cmp.notes, view=view)


def compare_document(cmp: Comparison) -> dict[str, Any]:
    """The ``stagemfu.compare/1`` JSON document."""
    return {
        "schema": schemas.COMPARE,
        "a": cmp.a,
        "b": cmp.b,
        "stages": cmp.stages.to_dicts(),
        "kernels": cmp.kernels.to_dicts(),
        "notes": list(cmp.notes),
    }
