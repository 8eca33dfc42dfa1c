"""Renderers for ``stagemfu postprocess`` on several traces: JSON, CSV, terminal and Markdown.

``stagemfu.postprocess.many/1`` holds one ``stagemfu.postprocess/1`` document per trace (without
per-instance rows), the combined table and the straggler view. Times are integer nanoseconds in
data and milliseconds on screen, as for one trace.
"""

from __future__ import annotations

import polars as pl
from rich.console import RenderableType

from stagemfu import schemas
from stagemfu.postprocess.many import CombinedTimes
from stagemfu.report.render import postprocess_data
from stagemfu.report.render.markdown import markdown_document
from stagemfu.report.render.postprocess_view import NS_PER_MS, ms_columns
from stagemfu.report.render.terminal import terminal_document
from stagemfu.report.render.text import stage_labels
from stagemfu.report.render.view import DEFAULT_VIEW, TableView

MANY_TABLES = postprocess_data.MANY_TABLES
PER_TRACE_ROWS_SHOWN = 16  # traces whose stage tables the terminal and Markdown views print
RANGE_TIMES = ("wall", "span", "busy", "kernel", "comm")  # the times the combined and per-trace tables show


def many_document(ct: CombinedTimes, *, top: int | None = None) -> dict:
    """The ``stagemfu.postprocess.many/1`` JSON document, its tables as frames (written by
    :func:`stagemfu.report.render.json_stream.json_chunks`)."""
    return {
        "schema": schemas.POSTPROCESS_MANY,
        "straggler_metric": ct.metric,
        "straggler_threshold": ct.threshold,
        "combined": ct.combined,
        "stragglers": ct.stragglers,
        "traces": [postprocess_data.postprocess_document(st, top=top) for st in ct.traces],
        "notes": list(ct.notes),
    }


def many_table(ct: CombinedTimes, name: str, *, top: int | None = None) -> pl.DataFrame:
    """``combined``, ``stragglers``, or a per-trace table stacked over the traces with a ``trace`` column."""
    if name in MANY_TABLES:
        return getattr(ct, name)
    return pl.concat(
        [
            postprocess_data.table(st, name, top=top).select(pl.lit(label).alias("trace"), pl.all())
            for st, label in zip(ct.traces, ct.labels)
        ],
        how="vertical_relaxed",
    )


def many_tables(ct: CombinedTimes, *, top: int | None = None) -> dict[str, pl.DataFrame]:
    """Every table for the SQLite output: ``combined``, ``stragglers`` and each per-trace table
    stacked over the traces with a ``trace`` column."""
    return {name: many_table(ct, name, top=top) for name in (*MANY_TABLES, *postprocess_data.TABLES)}


def many_meta(ct: CombinedTimes) -> dict:
    """What the document holds besides its tables: schema, straggler settings, notes."""
    return {
        "schema": schemas.POSTPROCESS_MANY,
        "straggler_metric": ct.metric,
        "straggler_threshold": ct.threshold,
        "traces": [str(st.trace.path) for st in ct.traces],
        "notes": list(ct.notes),
    }


def combined_rows(ct: CombinedTimes) -> pl.DataFrame:
    """Sums over traces, and the straggler metric's spread over traces, in ms; largest busy time first."""
    c, m = (
        ct.combined.sort("busy_ns", descending=True, nulls_last=True, maintain_order=True),
        ct.metric.removesuffix("_ns"),
    )
    sums = ms_columns(c, *RANGE_TIMES)
    spread = {f"{m} {s} ms": c[f"{m}_{s}_ns"] / NS_PER_MS for s in ("min", "median", "max")}
    return pl.DataFrame({"range": stage_labels(c), "traces": c["traces"], "inst": c["instances"], **sums, **spread})


def straggler_rows(ct: CombinedTimes) -> pl.DataFrame:
    s, m = ct.stragglers, ct.metric.removesuffix("_ns")
    return pl.DataFrame(
        {
            "trace": s["trace"],
            "range": stage_labels(s),
            f"{m} ms": s["value_ns"] / NS_PER_MS,
            "median ms": s["median_ns"] / NS_PER_MS,
            "over median %": s["excess"] * 100,
        }
    )


def per_trace_rows(ct: CombinedTimes) -> pl.DataFrame:
    p = ct.per_trace.filter(pl.col("trace").is_in(list(ct.labels[:PER_TRACE_ROWS_SHOWN]))).sort(
        pl.col("busy_ns").sum().over("domain", "name"), descending=True, nulls_last=True, maintain_order=True
    )
    return pl.DataFrame(
        {
            "trace": p["trace"],
            "range": stage_labels(p),
            "inst": p["instances"],
            **ms_columns(p, *RANGE_TIMES),
        }
    )


def summary_lines(ct: CombinedTimes) -> list[str]:
    m = ct.metric.removesuffix("_ns")
    lines = [
        f"{len(ct.traces)} traces; stragglers: {m} time more than {ct.threshold:.0%} over the median of the traces "
        "that hold the range"
    ]
    if len(ct.traces) > PER_TRACE_ROWS_SHOWN:
        lines.append(
            f"per-trace tables of the first {PER_TRACE_ROWS_SHOWN} traces shown; all are in --format json "
            "and --format csv --table ranges"
        )
    return lines


def sections(ct: CombinedTimes) -> list[tuple[str, pl.DataFrame]]:
    m = ct.metric.removesuffix("_ns")
    parts = [
        (f"Combined over traces (sums; {m} min/median/max per trace)", combined_rows(ct)),
        (f"Stragglers ({m} > median + {ct.threshold:.0%})", straggler_rows(ct)),
        ("Per trace", per_trace_rows(ct)),
    ]
    return [(title, frame) for title, frame in parts if frame.height]


def terminal_view(ct: CombinedTimes, *, view: TableView = DEFAULT_VIEW) -> RenderableType:
    head = [*summary_lines(ct), *(["no stragglers"] if ct.stragglers.is_empty() else [])]
    return terminal_document(head, sections(ct), ct.notes, view=view)


def markdown_view(ct: CombinedTimes, *, view: TableView = DEFAULT_VIEW) -> str:
    title = "stagemfu postprocess: several traces"
    return markdown_document(title, summary_lines(ct), sections(ct), notes=ct.notes, view=view)
