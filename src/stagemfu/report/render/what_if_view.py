"""A what-if sweep for people: rich terminal tables and the same as Markdown.

Per combination and stage: GFLOP, GB moved (estimated), the KV cache held after the stage (GB),
intensity (FLOP/B), the roofline time (ms) and its bound; per combination the whole generation's
bounds (TTFT, TPOT, generation, decode tokens/s); then where decode turns compute-bound. The swept
values are label columns (text), so a narrow terminal never drops them.
"""

from __future__ import annotations

import polars as pl
from rich.console import RenderableType

from stagemfu.report.render.markdown import markdown_document
from stagemfu.report.render.terminal import terminal_document
from stagemfu.report.render.view import TableView
from stagemfu.report.roofline import ridge_intensity
from stagemfu.report.what_if import MAX_BATCH, WhatIf

GIGA, NS_PER_MS = 1e9, 1e6
ALL_ROWS = TableView(rows=None)  # a sweep is as long as the user asked for: every row is shown


def stage_rows(w: WhatIf) -> pl.DataFrame:
    """Every stage of every combination in display units."""
    s = w.stages
    return s.select(
        *_values(w),
        "stage",
        (pl.col("flops") / GIGA).alias("GFLOP"),
        (pl.col("bytes") / GIGA).alias("GB (est.)"),
        (pl.col("kv_bytes") / GIGA).alias("KV GB held"),
        pl.col("intensity").alias("FLOP/B"),
        *([(pl.col("roofline_ns") / NS_PER_MS).alias("roofline ms"), "bound"] if w.peak is not None else []),
    )


def generation_rows(w: WhatIf) -> pl.DataFrame:
    """Per combination: the roofline bounds of TTFT, TPOT, the whole generation and decode tokens/s."""
    if w.peak is None:
        return pl.DataFrame()
    return w.generation.select(
        *_values(w),
        (pl.col("ttft_ns") / NS_PER_MS).alias("TTFT ms"),
        (pl.col("tpot_ns") / NS_PER_MS).alias("TPOT ms"),
        (pl.col("generation_ns") / NS_PER_MS).alias("generation ms"),
        pl.col("decode_tokens_per_s").alias("decode tokens/s"),
    )


def compute_bound_lines(w: WhatIf) -> list[str]:
    """Where decode turns compute-bound, one line per combination of the inputs other than the batch."""
    if w.peak is None:
        return []
    ridge = ridge_intensity(w.peak)
    lines = []
    for row in w.compute_bound.iter_rows(named=True):
        where = ", ".join(f"{k} {row[k]}" for k in w.compute_bound.columns if not k.startswith("decode_"))
        head = f"{where}: " if where else ""
        if row["decode_batch"] is not None:
            batch = row["decode_batch"]
            lines.append(f"{head}decode turns compute-bound at batch {batch:,} (ridge {ridge:,.0f} FLOP/B)")
        else:
            lines.append(
                f"{head}decode stays memory-bound at any batch up to {MAX_BATCH:,}: its intensity levels off at "
                f"{row['decode_intensity_max']:,.1f} FLOP/B, below the ridge of {ridge:,.0f} FLOP/B"
            )
    return lines


def summary_lines(w: WhatIf) -> list[str]:
    spec, base, p = w.sweep.spec, w.sweep.base, w.peak
    swept = "; ".join(f"{axis} {', '.join(str(v) for v in values)}" for axis, values in w.sweep.axes.items())
    lines = [
        f"{spec.name} ({spec.family}): what-if over {swept or 'one input shape'}",
        f"config: {spec.source}",
        f"inputs not swept: mode {base.mode}, {base.text_tokens} text tokens, {base.new_tokens} generated, "
        f"batch {base.batch}, {base.dtype}" + (f", {base.crops} crops" if base.crops is not None else ""),
    ]
    if p is None:
        lines.append("no GPU named: pass --gpu NAME (or --peak-tflops and --peak-bandwidth) for roofline times")
    else:
        bandwidth = f"{p.bandwidth_gbs:,.0f} GB/s, ridge {ridge_intensity(p):,.0f} FLOP/B" if p.bandwidth_gbs else ""
        lines.append(
            f"GPU {p.model or p.gpu or 'override'}: {p.tflops:,.1f} TFLOP/s dense {p.dtype}, {bandwidth} "
            f"({p.source}: {p.reference})"
        )
    return lines


def sections(w: WhatIf) -> list[tuple[str, pl.DataFrame]]:
    parts = [
        ("Roofline per stage" if w.peak is not None else "FLOPs, bytes and KV cache per stage", stage_rows(w)),
        ("Whole generation: roofline bounds (TTFT = vision + prefill, TPOT = mean decode step)", generation_rows(w)),
    ]
    return [(title, frame) for title, frame in parts if frame.height]


def terminal_view(w: WhatIf) -> RenderableType:
    lists = [("Decode and the ridge point", compute_bound_lines(w))] if w.compute_bound.height else []
    return terminal_document(summary_lines(w), sections(w), w.notes, lists=lists, view=ALL_ROWS)


def markdown_view(w: WhatIf) -> str:
    lists = [("Decode and the ridge point", compute_bound_lines(w))] if w.compute_bound.height else []
    return markdown_document(
        "stagemfu analyze --sweep", summary_lines(w), sections(w), lists=lists, notes=w.notes, view=ALL_ROWS
    )


def _values(w: WhatIf) -> list[pl.Expr]:
    """The swept columns as text: labels that identify a row, never left out of a narrow table."""
    return [pl.col(axis).cast(pl.Utf8) for axis in w.sweep.axes]
