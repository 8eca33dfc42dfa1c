"""Human-readable views of a :class:`StageTimes`: rich terminal tables and a Markdown document.

Both views show the same sections in the same order; times print in milliseconds, shares in
percent. Every trace string goes through :mod:`stagemfu.report.render.text` first.
"""

from __future__ import annotations

import dataclasses

import polars as pl
from rich.console import RenderableType

from stagemfu.postprocess.metrics import METRICS
from stagemfu.postprocess.stages import StageTimes
from stagemfu.report.op_ranges import group_op_ranges, has_call_names
from stagemfu.report.render.markdown import markdown_document
from stagemfu.report.render.postprocess_data import table
from stagemfu.report.render.terminal import terminal_document
from stagemfu.report.render.text import one_line, stage_labels
from stagemfu.report.render.view import DEFAULT_VIEW, TableView

NAME_WIDTH = 48
NS_PER_MS = 1e6
IDLE = "idle % of span"  # 1 - busy/span, the one idle share every table and the diagnosis use
TIMES = {f"{m.label} ms": m.name for m in METRICS if m.stats}  # in the stage, path and process tables


def ms_columns(frame: pl.DataFrame, *bases: str) -> dict[str, pl.Series]:
    """``{base} ms`` for each ``{base}_ns`` column, so every table converts nanoseconds the same way."""
    return {f"{b} ms": frame[f"{b}_ns"] / NS_PER_MS for b in bases}


def _display(
    frame: pl.DataFrame, columns: dict[str, str], *, label: tuple[str, pl.Series] | None = None
) -> pl.DataFrame:
    """A displayed table: the label column (by default ``range``, each row's stage label), then each
    column renamed; *_ns in ms, shares in %."""
    name, values = label or ("range", stage_labels(frame))

    def shown(column: str) -> pl.Series:
        if column.endswith("_ns"):
            return frame[column] / NS_PER_MS
        return frame[column] * 100 if column.endswith("_share") else frame[column]

    return pl.DataFrame({name: values, **{title: shown(col) for title, col in columns.items()}})


def stage_rows(st: StageTimes) -> pl.DataFrame:
    """The per-stage table as displayed: label, counts, times in ms, idle share in %."""
    return _display(
        st.ranges,
        {
            "inst": "instances",
            "gpu inst": "gpu_instances",
            **TIMES,
            "kernel ms": "kernel_ns",
            IDLE: "idle_share",
            "gpu ops": "gpu_ops",
            "kernels": "kernels",
        },
    )


def path_rows(st: StageTimes) -> pl.DataFrame:
    return _display(
        st.paths,
        {
            "inst": "instances",
            **TIMES,
            "excl ms": "exclusive_busy_ns",
            "kernel ms": "kernel_ns",
            IDLE: "idle_share",
        },
        label=("path", st.paths["path"]),
    )


def repeated_rows(st: StageTimes) -> pl.DataFrame:
    """Instance statistics for ranges that repeat (decode steps), in ms."""
    s = st.instance_stats.filter(pl.col("count") > 1)
    cols = ["first_ns", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "min_ns", "max_ns"]
    return pl.DataFrame(
        {
            "range": stage_labels(s),
            "time": s["metric"].str.replace("_ns", ""),
            "count": s["count"],
            **{c.replace("_ns", " ms"): s[c] / NS_PER_MS for c in cols},
        }
    )


def category_rows(st: StageTimes) -> pl.DataFrame:
    """Share of each stage's busy time per kernel category, one column per category."""
    c = st.categories
    if c.is_empty():
        return pl.DataFrame({"range": []})
    wide = (
        c.with_columns(
            range=pl.concat_str([pl.col("domain"), pl.lit(":"), pl.col("name")]).str.strip_prefix(":"),
            pct=pl.col("busy_share") * 100,
            category=pl.col("category") + " %",
        )
        .pivot(on="category", index="range", values="pct", aggregate_function="sum")
        .fill_null(0.0)
    )
    order = stage_rows(st).select("range").with_row_index("_o")  # the stage table's order, by a join
    return wide.join(order, on="range").sort("_o", maintain_order=True).drop("_o")


def kernel_rows(st: StageTimes, top: int) -> pl.DataFrame:
    order = st.ranges.select("domain", "name").with_row_index("_o")
    k = table(st, "kernels", top=top).join(order, on=["domain", "name"], how="left", maintain_order="left")
    k = k.sort("_o", maintain_order=True)
    return pl.DataFrame(
        {
            "range": stage_labels(k),
            "kernel": k["kernel"],
            "category": k["category"],
            "count": k["count"],
            "total ms": k["total_ns"] / NS_PER_MS,
            "% of busy": k["busy_share"] * 100,
        }
    )


def device_rows(st: StageTimes) -> pl.DataFrame:
    d = st.devices
    return pl.DataFrame(
        {
            "range": stage_labels(d),
            "device": d["device"],
            **ms_columns(d, "span", "busy", "kernel", "comm", "overlap"),
            "gpu ops": d["gpu_ops"],
        }
    )


def process_rows(st: StageTimes) -> pl.DataFrame:
    """Stage times per process (one row per process that ran the range), for multi-process traces."""
    return _display(
        st.processes,
        {
            "pid": "pid",
            "inst": "instances",
            **TIMES,
            "kernel ms": "kernel_ns",
            "comm ms": "comm_ns",
            "overlap ms": "overlap_ns",
        },
    )


def communication_rows(st: StageTimes) -> pl.DataFrame:
    """Communication kernel time per stage and how much of it overlapped other kernels."""
    r = st.ranges.filter(pl.col("comm_ns") > 0)
    shares = r.select(
        overlap_share=pl.col("overlap_ns") / pl.col("comm_busy_ns"),
        comm_busy_share=pl.when(pl.col("busy_ns") > 0).then(pl.col("comm_busy_ns") / pl.col("busy_ns")),
    )
    return _display(
        r.hstack(shares),
        {
            "comm ms": "comm_ns",
            "comm busy ms": "comm_busy_ns",
            "% of busy": "comm_busy_share",
            "overlap ms": "overlap_ns",
            "overlap % of comm": "overlap_share",
        },
    )


def summary_lines(st: StageTimes, view: TableView = DEFAULT_VIEW) -> list[str]:
    t, u = st.totals.row(0, named=True), st.unattributed.row(0, named=True)
    gpus = ", ".join(f"{g['id']}: {g['name']}" for g in st.trace.gpus.iter_rows(named=True)) or "unknown"
    lines = [
        f"trace {st.trace.path} ({st.trace.origin}); GPUs {gpus}",
        f"all GPU work: {t['gpu_ops']:,} ops, {t['kernels']:,} kernels, busy {t['busy_ns'] / NS_PER_MS:.3f} ms, "
        f"kernel {t['kernel_ns'] / NS_PER_MS:.3f} ms, span {t['span_ns'] / NS_PER_MS:.3f} ms",
        f"unattributed (launched outside every range): {u['gpu_ops']:,} ops, busy {u['busy_ns'] / NS_PER_MS:.3f} ms, "
        f"kernel {u['kernel_ns'] / NS_PER_MS:.3f} ms",
    ]
    if st.within:
        lines.append(f"restricted to instances within range {one_line(st.within, NAME_WIDTH)!r}")
    if not view.full_names and has_call_names(st):
        lines.append(
            "PyTorch emit_nvtx ranges grouped by operator ('aten::mul' for 'aten::mul, seq = 4, op_id = 9, ...'); "
            "--full-names shows every call"
        )
    lines.append("tables sorted by GPU busy time, largest first")
    return lines


def for_people(st: StageTimes, view: TableView) -> StageTimes:
    """What the views show: ``emit_nvtx`` calls grouped by operator (unless ``view.full_names``) and
    the per-range tables sorted by GPU busy time, then wall time, largest first."""
    st = st if view.full_names else group_op_ranges(st)
    by_time = [pl.col("busy_ns").fill_null(0), pl.col("wall_ns").fill_null(0)]
    ranges = st.ranges.sort(by_time, descending=True, maintain_order=True)
    order = ranges.select("domain", "name").with_row_index("_o")
    return dataclasses.replace(
        st,
        ranges=ranges,
        paths=st.paths.sort(by_time, descending=True, maintain_order=True),
        processes=st.processes.sort(by_time, descending=True, maintain_order=True),
        devices=st.devices.sort(pl.col("busy_ns").fill_null(0), descending=True, maintain_order=True),
        instance_stats=st.instance_stats.join(order, on=["domain", "name"], how="left", maintain_order="left")
        .sort("_o", maintain_order=True)
        .drop("_o"),
    )


def sections(st: StageTimes, top: int) -> list[tuple[str, pl.DataFrame]]:
    """The titled tables both views print, empty ones left out (``st`` as :func:`for_people` makes it)."""
    parts = [
        ("Stages (per range name, all instances summed)", stage_rows(st)),
        ("Paths (nesting; exclusive busy = GPU work of no child range)", path_rows(st)),
        ("Repeated ranges: per-instance statistics", repeated_rows(st)),
        ("Kernel categories (% of busy time)", category_rows(st)),
        (f"Top {top} kernels per stage", kernel_rows(st, top)),
    ]
    parts.append(
        ("Communication (NCCL...) kernels; overlap = time they ran alongside other kernels", communication_rows(st))
    )
    if st.processes["pid"].n_unique() > 1:
        parts.append(("Per process", process_rows(st)))
    if st.devices["device"].n_unique() > 1:
        parts.append(("Per device", device_rows(st)))
    return [(title, frame) for title, frame in parts if frame.height]


def terminal_view(st: StageTimes, *, top: int = 5, view: TableView = DEFAULT_VIEW) -> RenderableType:
    """Rich renderables for the terminal; ``top`` kernels per stage."""
    shown = for_people(st, view)
    return terminal_document(summary_lines(st, view), sections(shown, top), st.notes, view=view)


def markdown_view(st: StageTimes, *, top: int = 5, view: TableView = DEFAULT_VIEW) -> str:
    """The same content as a Markdown document."""
    shown = for_people(st, view)
    return markdown_document(
        "stagemfu postprocess", summary_lines(st, view), sections(shown, top), notes=st.notes, view=view
    )
