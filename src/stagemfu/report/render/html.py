"""One self-contained HTML page for an :class:`MfuReport`: tables, plotly charts, notes, metadata.

Nothing is fetched over the network: styles are inline and plotly.js (about 4.8 MB, from the
installed ``plotly`` package) is embedded once. Tables are written here with every string
HTML-escaped; charts are drawn in the browser from a JSON island (``<script
type="application/json">``) in which ``<``, ``>`` and ``&`` are escaped as ``\\u003c``-style
sequences, so no trace string can close the script element. The page's own script passes names
to plotly with ``<`` and ``&`` turned into entities, which plotly shows as plain text instead of
reading them as its label markup.
"""

from __future__ import annotations

import html
import json
import secrets
from importlib import resources
from typing import Any

import polars as pl

from stagemfu.errors import MissingDependencyError
from stagemfu.report import MfuReport
from stagemfu.report.compare import Comparison
from stagemfu.report.render import compare_view, report_view
from stagemfu.report.render.report_data import report_document
from stagemfu.report.render.text import number, one_line

KERNEL_WIDTH = 120
NS_PER_MS = 1e6

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #1d2733; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d8dee4; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eaeef2; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.chart { width: 100%; height: 380px; }
.note { color: #7a4b00; } .muted { color: #59636e; }
code, .kernel { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
"""

SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('report-data').textContent);
  function esc(s) { return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  var cfg = {displaylogo: false, responsive: true};
  function shade(f) { return 'rgba(31, 119, 180, ' + (0.15 + 0.85 * f).toFixed(3) + ')'; }
  var stages = data.stages.map(function (s) { return esc(s.stage); });
  var pct = function (key) { return data.stages.map(function (s) { return s[key] == null ? null : 100 * s[key]; }); };
  Plotly.newPlot('chart-mfu', ['kernel', 'busy', 'wall'].map(function (b) {
    return {type: 'bar', name: 'MFU on ' + b + ' time', x: stages, y: pct('mfu_' + b)};
  }), {barmode: 'group', yaxis: {title: {text: 'MFU %'}}, margin: {t: 20}}, cfg);
  var t = data.timeline;
  Plotly.newPlot('chart-timeline', [{
    type: 'bar', orientation: 'h', y: t.map(function (r) { return esc(r.stage); }),
    base: t.map(function (r) { return r.start_ns / 1e6; }), x: t.map(function (r) { return r.wall_ns / 1e6; }),
    marker: {color: t.map(function (r) { return shade(r.idle_share == null ? 0 : 1 - r.idle_share); })},
    hovertext: t.map(function (r) { return esc(r.path) + '<br>span ' + (r.span_ns / 1e6).toFixed(3) + ' ms, busy ' +
      (r.busy_ns / 1e6).toFixed(3) + ' ms'; }),
    hoverinfo: 'text+x'
  }], {xaxis: {title: {text: 'ms from the first stage (bar: wall time; darker: GPU busy for more of the span)'}},
       yaxis: {autorange: 'reversed'}, margin: {t: 20}}, cfg);
  var d = data.decode_steps;
  if (d.length) {
    var step = d.map(function (r, i) { return i + 1; });
    var ms = function (key) { return d.map(function (r) { return r[key] / 1e6; }); };
    Plotly.newPlot('chart-decode', [
      {type: 'scatter', name: 'wall ms', x: step, y: ms('wall_ns')},
      {type: 'scatter', name: 'busy ms', x: step, y: ms('busy_ns')},
      {type: 'scatter', name: 'kernel ms', x: step, y: ms('kernel_ns')},
      {type: 'scatter', name: 'MFU kernel %', x: step, yaxis: 'y2',
       y: d.map(function (r) { return r.mfu_kernel == null ? null : 100 * r.mfu_kernel; })}
    ], {xaxis: {title: {text: 'decode step'}}, yaxis: {title: {text: 'ms'}},
        yaxis2: {title: {text: 'MFU kernel %'}, overlaying: 'y', side: 'right'}, margin: {t: 20}}, cfg);
  }
  var c = data.categories, names = [];
  c.forEach(function (r) { if (names.indexOf(r.category) < 0) { names.push(r.category); } });
  Plotly.newPlot('chart-categories', names.map(function (cat) {
    var rows = c.filter(function (r) { return r.category === cat; });
    return {type: 'bar', name: esc(cat), x: rows.map(function (r) { return esc(r.name); }),
            y: rows.map(function (r) { return r.busy_share == null ? null : 100 * r.busy_share; })};
  }), {barmode: 'stack', yaxis: {title: {text: '% of busy time'}}, margin: {t: 20}}, cfg);
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
  Plotly.newPlot('chart-compare', traces, {barmode: 'group', yaxis: {title: {text: 'MFU %'}}, margin: {t: 20}},
                 {displaylogo: false, responsive: true});
  document.body.setAttribute('data-rendered', 'yes');
})();
"""


def html_page(rep: MfuReport) -> str:
    """The report as one page."""
    doc = report_document(rep)
    body = ["<ul>" + "".join(f"<li>{_e(line)}</li>" for line in report_view.summary_lines(rep)) + "</ul>"]
    body += [f"<h2>{_e(title)}</h2>{_table(frame)}" for title, frame in report_view.sections(rep)]
    body += [
        "<h2>Diagnosis</h2>",
        "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in report_view.diagnosis_lines(rep)) + "</ul>",
        "<h2>MFU per stage: kernel vs busy vs wall time</h2>",
        '<div id="chart-mfu" class="chart"></div>',
        "<h2>Stage timeline</h2>",
        '<div id="chart-timeline" class="chart"></div>',
    ]
    if rep.decode_steps.height:
        body += ["<h2>Decode steps</h2>", '<div id="chart-decode" class="chart"></div>']
    body += [
        "<h2>Kernel categories (% of each stage's busy time)</h2>",
        '<div id="chart-categories" class="chart"></div>',
        f"<h2>Top kernels per stage</h2>{_table(_kernel_rows(rep))}",
        f"<h2>Notes</h2>{_notes(rep.notes)}",
        f"<h2>Peak</h2>{_definitions(doc['peak'])}",
        f"<h2>Trace and run</h2>{_definitions(_metadata(doc))}",
    ]
    return _page(f"stagemfu report: {rep.times.trace.path.name}", body, doc, SCRIPT)


def compare_page(cmp: Comparison) -> str:
    """A comparison as one page: tables, MFU on kernel and wall time of both sides, notes."""
    body = ["<ul>" + "".join(f"<li>{_e(line)}</li>" for line in compare_view.header_lines(cmp)) + "</ul>"]
    body += ["<h2>MFU per stage, A vs B</h2>", '<div id="chart-compare" class="chart"></div>']
    body += [f"<h2>{_e(title)}</h2>{_table(frame)}" for title, frame in compare_view.sections(cmp)]
    body += [f"<h2>Notes</h2>{_notes(cmp.notes)}"]
    return _page("stagemfu compare", body, compare_view.compare_document(cmp), COMPARE_SCRIPT)


def _page(title: str, body: list[str], data: dict[str, Any], script: str) -> str:
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
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>",
        f'<script nonce="{nonce}">{_plotly_js()}</script>',
        f"</head><body><h1>{_e(title)}</h1>",
        *body,
        f'<script type="application/json" id="report-data">{_json_island(data)}</script>',
        f'<script nonce="{nonce}">{script}</script>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _plotly_js() -> str:
    try:
        js = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise MissingDependencyError("the HTML report embeds plotly.js: `pip install plotly`") from err
    return js.replace("</script", "<\\/script")


def _json_island(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, ensure_ascii=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _table(frame: pl.DataFrame) -> str:
    numeric = [frame.schema[c].is_numeric() for c in frame.columns]
    head = "".join(f'<th class="{"num" if n else ""}">{_e(c)}</th>' for c, n in zip(frame.columns, numeric))
    rows = []
    for row in frame.iter_rows():
        cells = []
        for value, column, num in zip(row, frame.columns, numeric):
            text = "" if value is None else number(value, column) if num else str(value)
            css = "num" if num else ("kernel" if column == "kernel" else "")
            cells.append(f'<td class="{css}">{_e(text, KERNEL_WIDTH)}</td>')
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


def _notes(notes: tuple[str, ...]) -> str:
    if not notes:
        return '<p class="muted">none</p>'
    return "<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in notes) + "</ul>"


def _metadata(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "trace": doc["trace"]["path"],
        "nsys": doc["trace"]["nsys_version"],
        "export schema": doc["trace"]["schema_version"],
        "within": doc["within"],
        "GPUs": "; ".join(f"{g.get('id')}: {g.get('name')}" for g in doc["gpus"]),
        "FLOPs": doc["flops_source"]["source"],
        "model": doc["flops_source"]["model"],
        "inputs": json.dumps(doc["flops_source"]["inputs"]) if doc["flops_source"]["inputs"] else None,
        **{f"run {k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in doc["run"].items()},
    }


def _definitions(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v, 2000)}</td></tr>" for k, v in values.items() if v is not None)
    return f"<table>{rows}</table>"


def _e(text: object, width: int | None = None) -> str:
    """The page's one escaping of text: control characters as visible escapes (:func:`.text.one_line`),
    then ``&``, ``<``, ``>`` and quotes as entities, so no string can start markup or end an attribute."""
    return html.escape(one_line(str(text), width), quote=True)
