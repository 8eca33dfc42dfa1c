"""The analyzer's result for people: a rich terminal table and the same as Markdown.

FLOPs show in GFLOP, bytes (and the KV cache held after each stage) in GB and parameters in
millions; the JSON and CSV keep the integers.
"""

from __future__ import annotations

import polars as pl
from rich.console import RenderableType

from stagemfu.analyzer import Analysis
from stagemfu.report.render.analyze_data import stage_table
from stagemfu.report.render.markdown import markdown_document
from stagemfu.report.render.terminal import terminal_document

GIGA, MEGA = 1e9, 1e6


def display_rows(analysis: Analysis) -> pl.DataFrame:
    """The stage table in display units, notes apart; a counter that was not run is left out."""
    frame = stage_table(analysis)
    counters = [f"flops_{c}" for c in ("analytic", "torch", "fvcore") if c in analysis.counters]
    return frame.select(
        "stage",
        *(pl.col(c).truediv(GIGA).alias(f"{c.removeprefix('flops_')} GFLOP") for c in counters),
        pl.col("flops").truediv(GIGA).alias("GFLOP (chosen)"),
        pl.col("bytes").truediv(GIGA).alias("GB (est.)"),
        pl.col("kv_bytes").truediv(GIGA).alias("KV GB held"),
        pl.col("params").truediv(MEGA).alias("params (M)"),
    )


def stage_notes(analysis: Analysis) -> list[str]:
    """Each stage's notes (counter disagreements and their causes) as ``stage: note`` lines."""
    rows = analysis.stages.select("stage", "notes").explode("notes").drop_nulls("notes")
    return [f"{stage}: {note}" for stage, note in rows.iter_rows()]


def summary_lines(analysis: Analysis) -> list[str]:
    shapes, inputs = analysis.shapes, analysis.shapes.inputs
    lines = [
        f"{analysis.spec.name} ({analysis.spec.family}): {analysis.params / 1e9:.3f} B parameters",
        f"config: {analysis.spec.source}",
        f"input: {shapes.prompt_tokens} prompt tokens per sequence ({shapes.image_tokens} image + "
        f"{inputs.text_tokens} text), {inputs.new_tokens} generated, batch {inputs.batch}, {inputs.dtype}",
    ]
    if shapes.base_size:
        crops = f" + {shapes.crops} crops of {shapes.local_size} ({shapes.crop_grid[0]}x{shapes.crop_grid[1]})"
        lines.append(f"views: mode {inputs.mode}, global {shapes.base_size}" + (crops if shapes.crops else ""))
    lines.append(f"model total (vision + prefill + decode): {analysis.total_flops / GIGA:,.3f} GFLOP")
    return lines


def terminal_view(analysis: Analysis) -> RenderableType:
    """Rich renderables: summary, the stage table, the notes."""
    table = ("FLOPs, bytes and parameters per stage", display_rows(analysis))
    notes = (*stage_notes(analysis), *analysis.notes)
    return terminal_document(summary_lines(analysis), [table], notes)


def markdown_view(analysis: Analysis) -> str:
    """The same content as a Markdown document; its Notes section is there even when empty."""
    notes = [*stage_notes(analysis), *analysis.notes]
    return markdown_document(
        "stagemfu analyze", summary_lines(analysis), [("Stages", display_rows(analysis))], lists=[("Notes", notes)]
    )
