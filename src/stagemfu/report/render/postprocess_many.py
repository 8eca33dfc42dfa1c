"""Renderers for ``stagemfu postprocess`` on several traces: JSON, CSV, terminal and Markdown.

``stagemfu.postprocess.many/1`` holds one ``stagemfu.postprocess/1`` document per trace (without
per-instance rows), the combined table and the straggler view. Times are integer nanoseconds in
data and milliseconds on screen, as for one trace.
"""

from __future__ import annotations

import polars as pl
from rich.console import Group, RenderableType
from rich.text import Text

from stagemfu.postprocess.many import CombinedTimes
from stagemfu.report.render import postprocess_data
from stagemfu.report.render.markdown import markdown_table
from stagemfu.report.render.postprocess_view import NS_PER_MS, _rich_table
from stagemfu.report.render.text import markdown_cell, one_line, stage_label

SCHEMA = "stagemfu.postprocess.many/1"
MANY_TABLES = ("combined", "stragglers")
PER_TRACE_ROWS_SHOWN = 16  # traces whose stage tables the terminal and Markdown views print


def many_document(ct: CombinedTimes, *, top: int | None = None) -> dict:
    """The ``stagemfu.postprocess.many/1`` JSON document."""
    return {
        "schema": SCHEMA,
        "straggler_metric": ct.metric,
        "straggler_threshold": ct.threshold,
        "combined": ct.combined.to_dicts(),
        "stragglers": ct.stragglers.to_dicts(),
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


def _labels(frame: pl.DataFrame) -> pl.Series:
    return pl.Series([stage_label(d, n) for d, n in zip(frame["domain"], frame["name"])], dtype=pl.Utf8)


def combined_rows(ct: CombinedTimes) -> pl.DataFrame:
    """Sums over traces, and the straggler metric's spread over traces, in ms."""
    c, m = ct.combined, ct.metric.removesuffix("_ns")
    sums = {f"{k} ms": c[f"{k}_ns"] / NS_PER_MS for k in ("wall", "span", "busy", "kernel", "comm")}
    spread = {f"{m} {s} ms": c[f"{m}_{s}_ns"] / NS_PER_MS for s in ("min", "median", "max")}
    return pl.DataFrame({"range": _labels(c), "traces": c["traces"], "inst": c["instances"], **sums, **spread})


def straggler_rows(ct: CombinedTimes) -> pl.DataFrame:
    s, m = ct.stragglers, ct.metric.removesuffix("_ns")
    return pl.DataFrame(
        {
            "trace": s["trace"],
            "range": _labels(s),
            f"{m} ms": s["value_ns"] / NS_PER_MS,
            "median ms": s["median_ns"] / NS_PER_MS,
            "over median %": s["excess"] * 100,
        }
    )


def per_trace_rows(ct: CombinedTimes) -> pl.DataFrame:
    p = ct.per_trace.filter(pl.col("trace").is_in(list(ct.labels[:PER_TRACE_ROWS_SHOWN])))
    return pl.DataFrame(
        {
            "trace": p["trace"],
            "range": _labels(p),
            "inst": p["instances"],
            **{f"{k} ms": p[f"{k}_ns"] / NS_PER_MS for k in ("wall", "span", "busy", "kernel", "comm")},
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


def terminal_view(ct: CombinedTimes) -> RenderableType:
    items: list[RenderableType] = [
        Text(line, style="bold" if i == 0 else "") for i, line in enumerate(summary_lines(ct))
    ]
    if ct.stragglers.is_empty():
        items.append(Text("no stragglers", style="green"))
    items += [_rich_table(title, frame) for title, frame in sections(ct)]
    items.extend(Text(f"note: {one_line(n)}", style="yellow") for n in ct.notes)
    return Group(*items)


def markdown_view(ct: CombinedTimes) -> str:
    out = ["# stagemfu postprocess: several traces", ""]
    out += [f"- {markdown_cell(line)}" for line in summary_lines(ct)]
    for title, frame in sections(ct):
        out += ["", f"## {title}", "", markdown_table(frame)]
    if ct.notes:
        out += ["", "## Notes", ""] + [f"- {markdown_cell(n)}" for n in ct.notes]
    return "\n".join(out) + "\n"
