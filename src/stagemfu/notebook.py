"""How results show in a Python prompt and in Jupyter.

A result (:class:`~stagemfu.postprocess.StageTimes`, :class:`~stagemfu.postprocess.CombinedTimes`,
:class:`~stagemfu.report.MfuReport`, :class:`~stagemfu.analyzer.Analysis`,
:class:`~stagemfu.report.what_if.WhatIf`) holds whole polars
frames; the repr that dataclasses generate prints every one of them, thousands of lines in a
notebook cell. :class:`Summarized` replaces it with one line (``repr``) and a short HTML summary
(``_repr_html_``: the headline and the first rows of the main table), built from the result's
:meth:`Summarized._summary`. The frames stay one attribute away (``st.ranges``, ``r.stages``).

Names and paths are data: every string is escaped in the HTML, and cut to one line in the repr.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

ROWS = 10  # rows of the main table in the HTML summary
NAME_CHARS = 80  # a longer name or path is cut, with an ellipsis


@dataclass(frozen=True)
class Summary:
    """What a result shows: a headline, a table (column labels, rows of cells already formatted),
    how many rows the full table has, the attribute that holds it and the order shown, and the
    result's notes."""

    kind: str
    source: str
    facts: tuple[str, ...]
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    total_rows: int = 0
    table: str = ""
    order: str = ""
    notes: tuple[str, ...] = ()


class Summarized:
    """Mixin for result dataclasses (declared with ``repr=False``): a one-line repr and an HTML
    summary for Jupyter, from the class's entry in :data:`SUMMARIES`."""

    def _summary(self) -> Summary:
        return SUMMARIES[type(self).__name__](self)

    def __repr__(self) -> str:
        s = self._summary()
        notes = f"; {_count(len(s.notes), 'note')}" if s.notes else ""
        return f"<{s.kind} of {_path(s.source)}: {', '.join(s.facts)}{notes}>"

    def _repr_html_(self) -> str:
        s = self._summary()
        parts = [
            f"<div><b>{html.escape(s.kind)}</b> of <code>{html.escape(_path(s.source))}</code>: "
            f"{html.escape(', '.join(s.facts))}</div>"
        ]
        if s.columns:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in s.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_short(cell))}</td>" for cell in row) + "</tr>" for row in s.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            shown = f"{len(s.rows):,} of {s.total_rows:,} rows of " if s.total_rows > len(s.rows) else "all rows of "
            order = f", {s.order}" if s.order else ""
            parts.append(f"<div>{shown}<code>{html.escape(s.table)}</code>{html.escape(order)}</div>")
        if s.notes:
            items = "".join(f"<li>{html.escape(note)}</li>" for note in s.notes)
            parts.append(f"<details><summary>{_count(len(s.notes), 'note')}</summary><ul>{items}</ul></details>")
        return "\n".join(parts)


def stage_times(st) -> Summary:
    """:class:`~stagemfu.postprocess.StageTimes`: ranges by busy time."""
    totals = st.totals
    facts = [
        _count(st.ranges.height, "range"),
        _count(st.instances.height, "instance"),
        _count(int(totals["kernels"].sum()), "kernel"),
        f"GPU busy {ms(totals['busy_ns'].sum())}",
    ]
    if st.within:
        facts.append(f"within {st.within!r}")
    ranges = _with_range_label(st.ranges.sort("busy_ns", descending=True, maintain_order=True))
    columns = (
        ("range", "range", "text"),
        ("inst", "instances", "int"),
        ("wall", "wall_ns", "ms"),
        ("span", "span_ns", "ms"),
        ("busy", "busy_ns", "ms"),
        ("kernel", "kernel_ns", "ms"),
        ("idle", "idle_share", "pct"),
    )
    return _tabled("StageTimes", str(st.trace.path), facts, ranges, columns, (".ranges", "by busy time"), st.notes)


def combined_times(ct) -> Summary:
    """:class:`~stagemfu.postprocess.CombinedTimes`: the combined table by the straggler metric."""
    metric = ct.metric.removesuffix("_ns")
    facts = [_count(ct.combined.height, "range"), _count(ct.stragglers.height, "straggler") + f" on {metric}"]
    combined = _with_range_label(ct.combined.sort(f"{metric}_median_ns", descending=True, maintain_order=True))
    columns = (
        ("range", "range", "text"),
        ("traces", "traces", "int"),
        (f"{metric} min", f"{metric}_min_ns", "ms"),
        (f"{metric} median", f"{metric}_median_ns", "ms"),
        (f"{metric} max", f"{metric}_max_ns", "ms"),
    )
    source = _count(len(ct.labels), "trace")
    return _tabled("CombinedTimes", source, facts, combined, columns, (".combined", f"by median {metric}"), ct.notes)


def mfu_report(r) -> Summary:
    """:class:`~stagemfu.report.MfuReport`: MFU per stage."""
    peak = r.peak
    facts = [_count(r.stages.height, "stage"), f"peak {peak.tflops:,.1f} TFLOP/s {peak.dtype} ({peak.source})"]
    if r.model:
        facts.append(f"prefill + decode MFU kernel {pct(r.model['mfu_kernel'])}, wall {pct(r.model['mfu_wall'])}")
    columns = (
        ("stage", "stage", "text"),
        ("GFLOP", "flops", "gflop"),
        ("wall", "wall_ns", "ms"),
        ("kernel", "kernel_ns", "ms"),
        ("MFU kernel", "mfu_kernel", "pct"),
        ("MFU wall", "mfu_wall", "pct"),
        ("MBU", "mbu", "pct"),
    )
    return _tabled("MfuReport", str(r.times.trace.path), facts, r.stages, columns, (".stages", ""), r.notes)


def analysis(a) -> Summary:
    """:class:`~stagemfu.analyzer.Analysis`: FLOPs, bytes and parameters per stage."""
    facts = [
        _count(a.stages.height, "stage"),
        f"{a.total_flops / 1e12:,.3f} TFLOP per generate call",
        _count(a.params, "parameter"),
        f"counters {', '.join(a.counters)}",
    ]
    frame = a.stages.select("stage", "flops", "bytes", "params")
    columns = (
        ("stage", "stage", "text"),
        ("GFLOP", "flops", "gflop"),
        ("bytes", "bytes", "int"),
        ("params", "params", "int"),
    )
    return _tabled("Analysis", a.spec.name, facts, frame, columns, (".stages", ""), a.notes)


def what_if(w) -> Summary:
    """:class:`~stagemfu.report.what_if.WhatIf`: the whole generation's roofline bounds per combination."""
    swept = "; ".join(f"{axis} {', '.join(map(str, values))}" for axis, values in w.sweep.axes.items())
    p = w.peak
    facts = [
        f"over {swept or 'one input shape'}",
        f"on {p.model or p.gpu or 'the override'} ({p.tflops:,.1f} TFLOP/s {p.dtype}, {p.bandwidth_gbs:,.0f} GB/s)"
        if p is not None
        else "no GPU (no roofline times)",
    ]
    columns = (
        *((axis, axis, "text") for axis in w.sweep.axes),
        ("TTFT", "ttft_ns", "ms"),
        ("TPOT", "tpot_ns", "ms"),
        ("generation", "generation_ns", "ms"),
    )
    return _tabled("WhatIf", w.sweep.spec.name, facts, w.generation, columns, (".generation", ""), w.notes)


SUMMARIES = {
    "StageTimes": stage_times,
    "CombinedTimes": combined_times,
    "MfuReport": mfu_report,
    "Analysis": analysis,
    "WhatIf": what_if,
}


def _with_range_label(frame):
    """``frame`` with a ``range`` column: ``name``, or ``domain:name`` outside the default domain."""
    from stagemfu.report.render.text import stage_labels

    return frame.with_columns(stage_labels(frame).alias("range"))


def _tabled(kind, source, facts, frame, columns, table, notes) -> Summary:
    return Summary(
        kind=kind,
        source=source,
        facts=tuple(facts),
        columns=tuple(label for label, _, _ in columns),
        rows=table_rows(frame, columns),
        total_rows=frame.height,
        table=table[0],
        order=table[1],
        notes=tuple(notes),
    )


def table_rows(frame, columns: Sequence[tuple[str, str, str]], *, rows: int = ROWS) -> tuple[tuple[str, ...], ...]:
    """The first ``rows`` rows of ``frame`` as text: per cell ``(label, column, format)``, where the
    format is ``text``, ``int`` (thousands separators), ``ms`` (ns shown in ms), ``gflop``,
    ``pct`` (a fraction shown in %)."""
    head = frame.head(rows)
    cells = [[_cell(value, fmt) for value in head.get_column(column).to_list()] for _, column, fmt in columns]
    return tuple(zip(*cells)) if cells else ()


def ms(ns: float | None) -> str:
    """A time in ns, as milliseconds."""
    return _cell(ns, "ms")


def pct(share: float | None) -> str:
    """A fraction, as a percentage."""
    return _cell(share, "pct")


def _cell(value: object, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "int":
        return f"{value:,}"
    if fmt == "ms":
        return f"{value / 1e6:,.3f} ms"
    if fmt == "gflop":
        return f"{value / 1e9:,.3f}"
    if fmt == "pct":
        return f"{100 * value:.1f} %"
    return str(value)


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _short(text: str) -> str:
    """One line of at most :data:`NAME_CHARS` characters; control characters (newlines, terminal
    escapes) are shown escaped, never passed to the terminal."""
    from stagemfu.report.render.text import one_line

    return one_line(str(text), NAME_CHARS)


def _path(text: str) -> str:
    """A path as :func:`_short` shows it, but cut at the start: the file name is what tells two apart."""
    from stagemfu.report.render.text import ELLIPSIS, one_line

    line = one_line(str(text))
    return line if len(line) <= NAME_CHARS else ELLIPSIS + line[-(NAME_CHARS - 1) :]
