"""One self-contained HTML page for an :class:`MfuReport`: summary, plotly charts, tables, notes,
provenance.

Nothing is fetched over the network: styles are inline and plotly.js is embedded once, the
basic bundle (bar and scatter charts, 1.2 MB; the full bundle is 4.8 MB) shipped gzipped in
``data/`` with its MIT licence. Tables are written here with every string
HTML-escaped; charts are drawn in the browser from a JSON island (``<script
type="application/json">``) in which ``<``, ``>`` and ``&`` are escaped as ``\\u003c``-style
sequences, so no trace string can close the script element. The page's own script passes names
to plotly with ``<`` and ``&`` turned into entities, which plotly shows as plain text instead of
reading them as its label markup.
"""

from __future__ import annotations

import gzip
import html
import json
import secrets
from importlib import resources
from typing import Any

import polars as pl

from stagemfu.report import MfuReport
from stagemfu.report.compare import Comparison
from stagemfu.report.render import compare_view, report_view
from stagemfu.report.render.report_data import report_document
from stagemfu.report.render.text import number, one_line, stage_labels
from stagemfu.report.roofline import ridge_intensity

KERNEL_WIDTH = 120
NS_PER_MS = 1e6
CHART_BASES = ("kernel", "busy", "span", "wall")  # MFU chart, in the order the tables read them
PLOTLY_JS = "plotly-basic.min.js.gz"  # plotly.js's basic bundle (bar, scatter), MIT: plotly-basic.LICENSE.txt

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #1d2733; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d8dee4; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eaeef2; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.chart { width: 100%; height: 360px; }
.note { color: #7a4b00; } .muted { color: #59636e; }
.warning { background: #fff1f0; border: 1px solid #e5534b; color: #8b1a10; padding: 6px 12px; margin: 8px 0; }
.headline { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 10px 0; }
.headline div { font-size: 13px; color: #59636e; } .headline b { display: block; font-size: 20px; color: #1d2733; }
#summary ul { margin: 4px 0; font-size: 13px; }
code, .kernel { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
"""

# Charts draw from the JSON island; plotly gets names with < and & as entities (see the module doc).
# Every axis that shows an amount starts at zero, so 0.2 % of noise stays 0.2 % of the height.
SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var view = data.view;
  function esc(s) { return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  var cfg = {displaylogo: false, responsive: true};
  function zero(axis) { return Object.assign({rangemode: 'tozero', automargin: true}, axis); }
  function shade(f) { return 'rgba(31, 119, 180, ' + (0.15 + 0.85 * f).toFixed(3) + ')'; }
  var stages = data.stages.map(function (s) { return esc(s.stage); });
  var pct = function (key) { return data.stages.map(function (s) { return s[key] == null ? null : 100 * s[key]; }); };
  Plotly.newPlot('chart-mfu', view.bases.map(function (b) {
    return {type: 'bar', name: 'MFU on ' + b + ' time', x: stages, y: pct('mfu_' + b)};
  }), {barmode: 'group', yaxis: zero({title: {text: 'MFU % of peak'}}), xaxis: {automargin: true},
       margin: {t: 20}, legend: {orientation: 'h', y: 1.15}}, cfg);
  var t = data.timeline;
  Plotly.newPlot('chart-timeline', [{
    type: 'bar', orientation: 'h', y: t.map(function (r) { return esc(r.stage); }),
    base: t.map(function (r) { return r.start_ns / 1e6; }), x: t.map(function (r) { return r.wall_ns / 1e6; }),
    marker: {color: t.map(function (r) { return shade(r.idle_share == null ? 0 : 1 - r.idle_share); })},
    hovertext: t.map(function (r) { return esc(r.path) + '<br>span ' + (r.span_ns / 1e6).toFixed(3) + ' ms, busy ' +
      (r.busy_ns / 1e6).toFixed(3) + ' ms'; }),
    hoverinfo: 'text+x'
  }], {xaxis: zero({title: {text: 'ms from the first stage (bar: wall time; darker: GPU busy for more of its span)'}}),
       yaxis: {autorange: 'reversed', automargin: true}, margin: {t: 20}}, cfg);
  var d = data.decode_steps;
  if (d.length) {
    var step = d.map(function (r, i) { return i + 1; });
    var ms = function (key) { return d.map(function (r) { return r[key] / 1e6; }); };
    Plotly.newPlot('chart-decode', [
      {type: 'scatter', name: 'wall ms', x: step, y: ms('wall_ns')},
      {type: 'scatter', name: 'busy ms', x: step, y: ms('busy_ns')},
      {type: 'scatter', name: 'kernel ms', x: step, y: ms('kernel_ns')},
      {type: 'scatter', name: 'MFU kernel %', x: step, yaxis: 'y2', line: {dash: 'dot'},
       y: d.map(function (r) { return r.mfu_kernel == null ? null : 100 * r.mfu_kernel; })}
    ], {xaxis: {title: {text: 'decode step'}}, yaxis: zero({title: {text: 'ms'}}),
        yaxis2: zero({title: {text: 'MFU kernel %'}, overlaying: 'y', side: 'right'}),
        margin: {t: 20}, legend: {orientation: 'h', y: 1.15}}, cfg);
  }
  var roof = view.roofline;
  if (roof) {
    var steps = ['decode_first', 'decode_last'];  // single decode steps: the cloud shows every step
    var marked = data.stages.filter(function (s) {
      return s.intensity != null && s.tflops_kernel && steps.indexOf(s.stage) < 0;
    });
    var cloud = d.filter(function (r) { return r.intensity != null && r.tflops_kernel; });
    var xs = marked.concat(cloud).map(function (r) { return r.intensity; });
    var lo = Math.min(roof.ridge / 100, Math.min.apply(null, xs) / 2);
    var hi = Math.max(roof.ridge * 10, Math.max.apply(null, xs) * 2);
    Plotly.newPlot('chart-roofline', [
      {type: 'scatter', mode: 'lines', name: 'bandwidth roof (' + roof.bandwidth_gbs.toLocaleString() + ' GB/s)',
       x: [lo, roof.ridge], y: [roof.bandwidth_gbs * lo / 1e3, roof.tflops], line: {color: '#555'}},
      {type: 'scatter', mode: 'lines', name: 'compute roof (' + roof.tflops.toLocaleString() + ' TFLOP/s ' +
       esc(roof.dtype) + ')', x: [roof.ridge, hi], y: [roof.tflops, roof.tflops], line: {color: '#222'}},
      {type: 'scatter', mode: 'markers+text', name: 'ridge point (' + roof.ridge.toFixed(0) + ' FLOP/B)',
       x: [roof.ridge], y: [roof.tflops], text: ['ridge'], textposition: 'top center',
       marker: {symbol: 'diamond', size: 10, color: '#222'}},
      {type: 'scatter', mode: 'markers+text', name: 'stages (TFLOP/s on kernel time)',
       x: marked.map(function (s) { return s.intensity; }), y: marked.map(function (s) { return s.tflops_kernel; }),
       text: marked.map(function (s) { return esc(s.stage); }), textposition: 'middle right',
       marker: {size: 11, color: '#1f77b4'}},
      {type: 'scatter', mode: 'markers', name: 'decode steps', x: cloud.map(function (r) { return r.intensity; }),
       y: cloud.map(function (r) { return r.tflops_kernel; }), marker: {size: 6, opacity: 0.45, color: '#ff7f0e'},
       hovertext: cloud.map(function (r) { return 'generation ' + r.generation + ', step ' + r.step; }),
       hoverinfo: 'text+x+y'}
    ], {xaxis: {type: 'log', title: {text: 'arithmetic intensity (FLOP per byte, estimated bytes)'}, automargin: true},
        yaxis: {type: 'log', title: {text: 'TFLOP/s'}, automargin: true}, margin: {t: 20},
        legend: {orientation: 'h', y: 1.18}}, cfg);
  }
  var c = data.categories, names = [];
  var label = function (r) { return esc(r.domain ? r.domain + ':' + r.name : r.name); };
  c.forEach(function (r) { if (names.indexOf(r.category) < 0) { names.push(r.category); } });
  Plotly.newPlot('chart-categories', names.map(function (cat) {
    var rows = c.filter(function (r) { return r.category === cat; });
    return {type: 'bar', name: esc(cat), x: rows.map(label),
            y: rows.map(function (r) { return r.busy_share == null ? null : 100 * r.busy_share; })};
  }), {barmode: 'stack', yaxis: zero({title: {text: '% of busy time'}}),
       xaxis: {automargin: true, categoryorder: 'array', categoryarray: view.category_order.map(esc)},
       margin: {t: 20}}, cfg);
  document.body.setAttribute('data-rendered', 'yes');
})();
"""

COMPARE_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('report-data').textContent);
  function esc(s) { return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  var stages = data.stages.map(function (s) { return esc(s.stage); });
  var traces = [];
  ['kernel', 'wall'].forEach(function (b) {
    ['a', 'b'].forEach(function (side) {
      var y = data.stages.map(function (s) { var v = s['mfu_' + b + '_' + side]; return v == null ? null : 100 * v; });
      traces.push({type: 'bar', name: 'MFU ' + b + ' ' + side.toUpperCase(), x: stages, y: y});
    });
  });
  Plotly.newPlot('chart-compare', traces, {barmode: 'group', yaxis: {title: {text: 'MFU %'}, rangemode: 'tozero'},
                 xaxis: {automargin: true}, margin: {t: 20}},
                 {displaylogo: false, responsive: true});
  document.body.setAttribute('data-rendered', 'yes');
})();
"""


def html_page(rep: MfuReport) -> str:
    """The report as one page, in reading order: warnings, the headline numbers and summary, MFU per
    stage on each time base and the stage timeline, the diagnosis, the tables, the other charts,
    the notes, and the provenance (peak, trace, run) last."""
    doc = report_document(rep)
    body = [f'<p class="warning">{escape(w)}</p>' for w in rep.warnings]
    body += [
        f'<section id="summary">{_headline(rep)}<ul>'
        + "".join(f"<li>{escape(line)}</li>" for line in report_view.summary_lines(rep))
        + "</ul></section>",
        "<h2>MFU per stage on each time base</h2>",
        '<div id="chart-mfu" class="chart"></div>',
        "<h2>Stage timeline</h2>",
        f'<div id="chart-timeline" class="chart" style="height: {_timeline_height(rep)}px"></div>',
        "<h2>Diagnosis</h2>",
        "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in report_view.diagnosis_lines(rep)) + "</ul>",
    ]
    body += [f"<h2>{escape(title)}</h2>{table_html(frame)}" for title, frame in report_view.sections(rep)]
    body += _roofline_section(rep)
    if rep.decode_steps.height:
        body += ["<h2>Decode steps</h2>", '<div id="chart-decode" class="chart"></div>']
    body += [
        "<h2>Kernel categories (% of each stage's busy time)</h2>",
        '<div id="chart-categories" class="chart"></div>',
        f"<h2>Top kernels per stage</h2>{table_html(_kernel_rows(rep))}",
        f"<h2>Notes</h2>{notes_html(rep.notes)}",
        f'<section id="provenance"><h2>Peak</h2>{_definitions(doc["peak"])}',
        f"<h2>Trace and run</h2>{_definitions(_metadata(doc))}</section>",
    ]
    data = doc | {"view": _chart_view(rep)}
    return page(f"stagemfu report: {rep.times.trace.path.name}", body, data, SCRIPT)


def _headline(rep: MfuReport) -> str:
    """The few numbers a reader wants first: the peak, the whole generation's MFU on kernel and
    wall time, TTFT and TPOT."""
    items = [("peak", f"{rep.peak.tflops:,.1f} TFLOP/s {rep.peak.dtype}")]
    for base in ("kernel", "wall") if rep.model else ():
        share = rep.model.get(f"mfu_{base}")
        items.append((f"MFU {base} (prefill + decode)", "-" if share is None else f"{share * 100:.1f} %"))
    lat = rep.latency or {}
    for key, title in (("ttft_wall_ns", "TTFT wall"), ("tpot_wall_p50_ns", "TPOT p50 wall")):
        if lat.get(key) is not None:
            items.append((title, f"{lat[key] / NS_PER_MS:,.1f} ms"))
    return '<div class="headline">' + "".join(f"<div>{escape(k)}<b>{escape(v)}</b></div>" for k, v in items) + "</div>"


def _chart_view(rep: MfuReport) -> dict[str, Any]:
    """What the charts need besides the document: the time bases, and the category chart's stage
    labels (``domain:name``, as the trace names them) in the order of the stage table."""
    c = rep.categories.select("domain", "name").unique(maintain_order=True)
    rank = {s: i for i, s in enumerate(rep.stages["stage"].to_list())}
    labels = stage_labels(c).to_list()
    keys = [
        (min(rank.get(n, len(rank)), rank.get(label, len(rank))), i)
        for i, (n, label) in enumerate(zip(c["name"], labels))
    ]
    order = [label for _, label in sorted(zip(keys, labels))]
    return {"bases": list(CHART_BASES), "category_order": order, "roofline": _roofline_view(rep)}


def _roofline_section(rep: MfuReport) -> list[str]:
    """The roofline chart's heading and place, or a line saying why there is none."""
    head = "<h2>Roofline (log-log: each stage at its measured TFLOP/s on kernel time)</h2>"
    if _roofline_view(rep) is None:
        why = "no peak bandwidth" if not rep.peak.bandwidth_gbs else "no stage has estimated bytes"
        return [head, f'<p class="muted">no roofline chart: {why}</p>']
    return [head, '<div id="chart-roofline" class="chart" style="height: 460px"></div>']


def _roofline_view(rep: MfuReport) -> dict[str, Any] | None:
    """The roofs the chart draws: the peak, the bandwidth and their ridge point; None when it has nothing to show."""
    ridge = ridge_intensity(rep.peak)
    if ridge is None or rep.stages["intensity"].null_count() == rep.stages.height:
        return None
    p = rep.peak
    return {"tflops": p.tflops, "bandwidth_gbs": p.bandwidth_gbs, "ridge": ridge, "dtype": p.dtype}


def _timeline_height(rep: MfuReport) -> int:
    """Pixels for the timeline: one row per stage, so labels are never squeezed or clipped."""
    return 110 + 26 * max(rep.timeline["stage"].n_unique(), 1)


def compare_page(cmp: Comparison) -> str:
    """A comparison as one page: tables, MFU on kernel and wall time of both sides, notes."""
    body = ["<ul>" + "".join(f"<li>{escape(line)}</li>" for line in compare_view.header_lines(cmp)) + "</ul>"]
    body += ["<h2>MFU per stage, A vs B</h2>", '<div id="chart-compare" class="chart"></div>']
    body += [f"<h2>{escape(title)}</h2>{table_html(frame)}" for title, frame in compare_view.sections(cmp)]
    body += [f"<h2>Notes</h2>{notes_html(cmp.notes)}"]
    return page("stagemfu compare", body, compare_view.compare_document(cmp), COMPARE_SCRIPT)


def page(title: str, body: list[str], data: dict[str, Any], script: str) -> str:
    """The page skeleton: inline style, embedded plotly.js, the data island and the page's script.

    The content security policy lets only scripts carrying this page's nonce run, so markup that
    slipped into the page could not execute even if escaping failed.
    """
    nonce = secrets.token_urlsafe(18)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        f"script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; font-src data:\">",
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        f'<script nonce="{nonce}">{_plotly_js()}</script>',
        f"</head><body><h1>{escape(title)}</h1>",
        *body,
        f'<script type="application/json" id="report-data">{_json_island(data)}</script>',
        f'<script nonce="{nonce}">{script}</script>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _plotly_js() -> str:
    """plotly.js's basic bundle as shipped in ``data/`` (1.2 MB; the full bundle is 4.8 MB)."""
    packed = resources.files("stagemfu.data").joinpath(PLOTLY_JS).read_bytes()
    return gzip.decompress(packed).decode("utf-8").replace("</script", "<\\/script")


def _json_island(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, ensure_ascii=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def table_html(frame: pl.DataFrame) -> str:
    numeric = [frame.schema[c].is_numeric() for c in frame.columns]
    head = "".join(f'<th class="{"num" if n else ""}">{escape(c)}</th>' for c, n in zip(frame.columns, numeric))
    rows = []
    for row in frame.iter_rows():
        cells = []
        for value, column, num in zip(row, frame.columns, numeric):
            text = "" if value is None else number(value, column) if num else str(value)
            css = "num" if num else ("kernel" if column == "kernel" else "")
            cells.append(f'<td class="{css}">{escape(text, KERNEL_WIDTH)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _kernel_rows(rep: MfuReport) -> pl.DataFrame:
    k = rep.kernels
    return pl.DataFrame(
        {
            "stage": k["name"],
            "kernel": k["kernel"],
            "category": k["category"],
            "count": k["count"],
            "total ms": k["total_ns"] / NS_PER_MS,
            "% of busy": k["busy_share"] * 100,
        }
    )


def notes_html(notes: tuple[str, ...]) -> str:
    if not notes:
        return '<p class="muted">none</p>'
    return "<ul>" + "".join(f'<li class="note">{escape(n)}</li>' for n in notes) + "</ul>"


def _metadata(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "trace": doc["trace"]["path"],
        "format": doc["trace"]["format"],
        "tool version": doc["trace"]["tool_version"],
        **{k.replace("_", " "): v for k, v in doc["trace"].items() if k not in ("path", "format", "tool_version")},
        "within": doc["within"],
        "GPUs": "; ".join(f"{g.get('id')}: {g.get('name')}" for g in doc["gpus"]),
        "FLOPs": doc["flops_source"]["source"],
        "model": doc["flops_source"]["model"],
        "inputs": json.dumps(doc["flops_source"]["inputs"]) if doc["flops_source"]["inputs"] else None,
        **{f"run {k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in doc["run"].items()},
    }


def _definitions(values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(v, 2000)}</td></tr>" for k, v in values.items() if v is not None
    )
    return f"<table>{rows}</table>"


def escape(text: object, width: int | None = None) -> str:
    """The page's one escaping of text: control characters as visible escapes (:func:`.text.one_line`),
    then ``&``, ``<``, ``>`` and quotes as entities, so no string can start markup or end an attribute."""
    return html.escape(one_line(str(text), width), quote=True)
