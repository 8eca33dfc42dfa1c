"""A what-if sweep (``stagemfu analyze --sweep ... --format html``) as one self-contained page.

Line plots over the first swept input, one line per stage (and per value of the other swept
inputs): the roofline time, the TTFT and TPOT bounds, the arithmetic intensity against the GPU's
ridge point, and the KV cache held at the end of generation; then the tables and notes. The page
machinery (offline plotly.js, the escaped JSON island, the content security policy) is
:mod:`.html`'s.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from stagemfu.report.render import what_if_data, what_if_view
from stagemfu.report.render.html import escape, notes_html, page, table_html
from stagemfu.report.what_if import WhatIf

WHAT_IF_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var view = data.view;
  function esc(s) { return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  var cfg = {displaylogo: false, responsive: true};
  var palette = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
                 '#bcbd22', '#17becf'];
  var dashes = ['solid', 'dash', 'dot', 'dashdot', 'longdash', 'longdashdot'];
  var others = Object.keys(data.sweep).filter(function (a) { return a !== view.x; });
  function label(values) { return others.map(function (a) { return a + ' ' + values[a]; }).join(', '); }
  function index(list, key) { if (list.indexOf(key) < 0) { list.push(key); } return list.indexOf(key); }
  // One line per (what, values of the other swept inputs) over the first swept input: the colour
  // says what (a stage, TTFT or TPOT), the dash which values of the other inputs.
  function lines(rows, key, scale, what) {
    var groups = {}, order = [], whats = [], labels = [];
    rows.forEach(function (r) {
      var w = what(r), l = label(r.values), g = w + (l ? ' (' + l + ')' : '');
      if (!(g in groups)) {
        groups[g] = {x: [], y: [], color: palette[index(whats, w) % palette.length],
                     dash: dashes[index(labels, l) % dashes.length]};
        order.push(g);
      }
      groups[g].x.push(view.x ? r.values[view.x] : 0);
      groups[g].y.push(r[key] == null ? null : r[key] * scale);
    });
    return order.map(function (g) {
      var s = groups[g];
      return {type: 'scatter', mode: 'lines+markers', name: esc(g), x: s.x, y: s.y,
              line: {color: s.color, dash: s.dash}, marker: {color: s.color}};
    });
  }
  var stage = function (r) { return r.stage; };
  function layout(title, log) {
    return {xaxis: {title: {text: esc(view.x || 'input')}, type: view.x_type, automargin: true},
            yaxis: {title: {text: title}, type: log ? 'log' : 'linear', automargin: true},
            margin: {t: 20}, legend: {orientation: 'v'}};
  }
  if (data.gpu) {
    Plotly.newPlot('chart-time', lines(data.rows, 'roofline_ns', 1e-6, stage), layout('roofline time (ms)', true), cfg);
    var both = data.generation.map(function (r) { return Object.assign({metric: 'TTFT', ns: r.ttft_ns}, r); })
      .concat(data.generation.map(function (r) { return Object.assign({metric: 'TPOT', ns: r.tpot_ns}, r); }));
    var metric = function (r) { return r.metric; };
    Plotly.newPlot('chart-generation', lines(both, 'ns', 1e-6, metric), layout('roofline bound (ms)', true), cfg);
  }
  var intensity = lines(data.rows, 'intensity', 1, stage);
  if (data.gpu && view.x_range.length) {
    var ridge = data.gpu.ridge_intensity;
    intensity.push({type: 'scatter', mode: 'lines', name: 'ridge point (' + ridge.toFixed(0) + ' FLOP/B)',
                    x: view.x_range, y: [ridge, ridge], line: {dash: 'dash', color: '#222', width: 3}});
  }
  Plotly.newPlot('chart-intensity', intensity, layout('arithmetic intensity (FLOP/B)', true), cfg);
  var held = data.rows.filter(function (r) { return r.stage === view.kv_stage; });
  Plotly.newPlot('chart-kv', lines(held, 'kv_bytes', 1e-9, stage), layout('KV cache held (GB)', false), cfg);
  document.body.setAttribute('data-rendered', 'yes');
})();
"""


def what_if_page(w: WhatIf) -> str:
    """A what-if sweep as one page: line plots over the first swept input (roofline time, TTFT and
    TPOT bounds, intensity against the ridge point, the KV cache held), then the tables and notes."""
    body = ["<ul>" + "".join(f"<li>{escape(line)}</li>" for line in what_if_view.summary_lines(w)) + "</ul>"]
    charts = [
        ("chart-time", "Roofline time per stage"),
        ("chart-generation", "TTFT and TPOT bounds (whole generation)"),
    ] if w.peak is not None else []  # fmt: skip
    charts += [("chart-intensity", "Arithmetic intensity per stage"), ("chart-kv", "KV cache held at the end")]
    body += [f'<h2>{escape(title)}</h2><div id="{name}" class="chart"></div>' for name, title in charts]
    lines = what_if_view.compute_bound_lines(w)
    if lines:
        body += ["<h2>Decode and the ridge point</h2><ul>" + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>"]
    body += [f"<h2>{escape(title)}</h2>{table_html(frame)}" for title, frame in what_if_view.sections(w)]
    body += [f"<h2>Notes</h2>{notes_html(w.notes)}"]
    data = what_if_data.what_if_document(w) | {"view": _what_if_view(w)}
    return page(f"stagemfu what-if: {w.sweep.spec.name}", body, data, WHAT_IF_SCRIPT)


def _what_if_view(w: WhatIf) -> dict[str, Any]:
    """The x axis (the first swept input; a log axis for counts spanning 8x or more), its range for
    the ridge line, and the stage whose KV cache the last chart shows (the last one that holds it)."""
    axis = next(iter(w.sweep.axes), None)
    values = list(w.sweep.axes.get(axis, ())) if axis else []
    numeric = bool(values) and all(isinstance(v, int) for v in values)
    log = numeric and min(values) > 0 and max(values) >= 8 * min(values)
    x_type = "log" if log else "linear" if numeric else "category"
    held = w.stages.filter(pl.col("kv_bytes") > 0)["stage"].unique(maintain_order=True).to_list()
    kv_stage = "decode" if "decode" in held else held[-1] if held else None
    x_range = [min(values), max(values)] if numeric else [values[0], values[-1]] if values else []
    return {"x": axis, "x_type": x_type, "x_range": x_range, "kv_stage": kv_stage}
