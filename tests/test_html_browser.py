"""The HTML report in a real headless Chromium: loads offline without console errors, charts render,
the layout puts the summary and the MFU chart first, and hostile NVTX names are shown as text, never run.

The layout test saves its screenshot to ``$STAGEMFU_ARTIFACTS`` (the test's temporary directory
when unset) for a person to look at.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package
(its driver only; no browser download): ``make test`` installs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_traces import generation_trace, write_json

from stagemfu.cli import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE_IMG = '<img src=x onerror="window.__pwned=1">'
HOSTILE_SCRIPT = "</script><script>window.__pwned=2</script>"
CHARTS = ("chart-mfu", "chart-timeline", "chart-decode", "chart-roofline", "chart-categories")

# CI sets STAGEMFU_REQUIRE_BROWSER=1: there a missing browser is a failure, not a skip.
if os.environ.get("STAGEMFU_REQUIRE_BROWSER") == "1" and CHROMIUM is None:
    raise RuntimeError("STAGEMFU_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="the browser test needs Debian's chromium package")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium with a throw-away profile (playwright passes it as --user-data-dir), offline."""
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, offline=True
        )
        yield context
        context.close()


def open_page(browser, path):
    """Load the page; return it with every console message, page error and request seen."""
    page = browser.new_page()
    seen: list[tuple[str, str]] = []
    page.on("console", lambda m: seen.append((m.type, m.text)))
    page.on("pageerror", lambda e: seen.append(("pageerror", str(e))))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-rendered=yes]", timeout=30_000)
    return page, seen, requests


def write_report(trace, flops, page_path):
    result = CliRunner().invoke(cli, ["report", str(trace), "--flops", str(flops), "--html", str(page_path)])
    assert result.exit_code == 0, result.output
    return page_path


def test_page_loads_offline_without_console_errors_and_charts_render(browser, trace_paths, tmp_path):
    flops = write_json(
        tmp_path / "f.json",
        {"vision": 2e9, "sam": 1e9, "clip": 8e8, "prefill": 5e9, "decode": {"flops": 7e8, "bytes": 7e7}},
    )
    page_path = write_report(trace_paths["tiny_vlm"], flops, tmp_path / "report.html")
    page, seen, requests = open_page(browser, page_path)
    assert [m for m in seen if m[0] in ("error", "warning", "pageerror")] == []
    assert requests == [page_path.as_uri()]  # one self-contained file
    for chart in CHARTS:
        element = page.locator(f"#{chart}")
        assert element.locator(".main-svg").count() >= 1, chart
        assert len(element.screenshot()) > 8_000, f"{chart} looks blank"
    assert page.locator("#chart-mfu .bars .point").count() == 4 * 5  # kernel, busy, span, wall x 5 stages
    assert page.locator("#chart-decode .scatterlayer .trace").count() == 4
    assert page.locator("table").first.locator("tbody tr").count() >= 4
    assert "989.4" in page.locator("body").inner_text()


def test_hostile_nvtx_names_are_shown_as_text_and_never_run(browser, make_trace, tmp_path):
    trace = generation_trace(make_trace, tmp_path, vision_name=HOSTILE_IMG + HOSTILE_SCRIPT)
    flops = write_json(tmp_path / "f.json", {HOSTILE_IMG + HOSTILE_SCRIPT: 10, "prefill": 100, "decode": 50})
    page, seen, _ = open_page(browser, write_report(trace, flops, tmp_path / "hostile.html"))
    assert page.evaluate("window.__pwned") is None
    assert page.locator("body img").count() == 0
    assert HOSTILE_IMG in page.locator("body").inner_text()  # the table shows the name as typed
    assert [m for m in seen if m[0] in ("error", "pageerror")] == []
    # plotly draws the name as text too (an axis tick of the MFU chart), not as markup
    ticks = page.eval_on_selector_all("#chart-mfu .xtick text", "els => els.map(e => e.textContent)")
    assert any("onerror" in t for t in ticks)


def test_layout_puts_summary_and_mfu_chart_in_the_first_viewport_and_provenance_last(browser, tmp_path):
    """The embedded report in a 1280x900 window: headline and MFU chart visible without scrolling,
    the stage timeline before the first table, provenance at the end; every axis starts at zero and
    no timeline label is clipped."""
    page_path = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--counters", "analytic", "--html", str(page_path)])
    assert result.exit_code == 0, result.output
    assert page_path.stat().st_size < 1_600_000  # plotly's basic bundle; the full one made 4.9 MB
    page, seen, _ = open_page(browser, page_path)
    page.set_viewport_size({"width": 1280, "height": 900})
    artifacts = Path(os.environ.get("STAGEMFU_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "report-first-viewport.png"))

    def top(selector):
        return page.locator(selector).first.bounding_box()["y"]

    assert top("#summary .headline") < 200
    mfu = page.locator("#chart-mfu").bounding_box()
    assert mfu["y"] + mfu["height"] * 0.6 < 900  # most of the MFU chart is in the first screen
    assert top("#chart-mfu") < top("#chart-timeline") < top("table") < top("#provenance")
    after = "section#provenance ~ :is(h2, table, section, ul, div.chart)"
    assert page.locator(after).count() == 0  # nothing of the report after the provenance
    # axes of amounts start at zero: the first tick of every y axis (and the timeline's x axis) is 0
    for chart in ("chart-mfu", "chart-decode", "chart-categories"):
        ticks = page.eval_on_selector_all(f"#{chart} .ytick text", "els => els.map(e => e.textContent)")
        assert ticks[0] == "0", (chart, ticks)
    y2 = page.eval_on_selector_all("#chart-decode .y2tick text", "els => els.map(e => e.textContent)")
    assert y2[0] == "0", y2
    # timeline labels lie inside the chart, whole
    box = page.locator("#chart-timeline").bounding_box()
    labels = page.locator("#chart-timeline .ytick text")
    assert labels.count() >= 5
    for i in range(labels.count()):
        label = labels.nth(i).bounding_box()
        assert label["x"] >= box["x"] and label["x"] + label["width"] <= box["x"] + box["width"]
    # the category chart labels stages as the tables do and in their order
    cats = page.eval_on_selector_all("#chart-categories .xtick text", "els => els.map(e => e.textContent)")
    stages = ["vision", "sam", "encoder", "projector", "prefill", "decode"]
    assert cats == [f"stagemfu:{s}" for s in stages]  # the domain kept, the order of the stage table
    assert [m for m in seen if m[0] in ("error", "pageerror")] == []


def test_embedded_report_draws_the_roofline_log_log_with_its_roofs_ridge_stages_and_decode_cloud(browser, tmp_path):
    page_path = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--counters", "analytic", "--html", str(page_path)])
    assert result.exit_code == 0, result.output
    page, seen, _ = open_page(browser, page_path)
    chart = page.locator("#chart-roofline")
    assert [m for m in seen if m[0] in ("error", "pageerror")] == []
    assert len(chart.screenshot()) > 8_000
    names = page.eval_on_selector_all("#chart-roofline .legendtext", "els => els.map(e => e.textContent)")
    assert names == [
        "bandwidth roof (3,350 GB/s)", "compute roof (989.4 TFLOP/s bf16)", "ridge point (295 FLOP/B)",
        "stages (TFLOP/s on kernel time)", "decode steps",
    ]  # fmt: skip
    labels = page.eval_on_selector_all("#chart-roofline .textpoint text", "els => els.map(e => e.textContent)")
    assert set(labels) == {"ridge", "vision", "sam", "encoder", "projector", "prefill", "decode"}
    assert page.locator("#chart-roofline .scatterlayer .trace").nth(4).locator(".point").count() == 7  # steps
    log_axes = page.evaluate(
        "() => { var l = document.getElementById('chart-roofline').layout; return [l.xaxis.type, l.yaxis.type]; }"
    )
    assert log_axes == ["log", "log"]
    assert "Roofline per stage" in page.locator("body").inner_text()


def test_what_if_page_plots_every_stage_over_the_swept_batch(browser, tmp_path):
    page_path = tmp_path / "what-if.html"
    args = ["analyze", "deepseek-ocr2", "--sweep", "batch=1,2,4,8,16,32,64", "--sweep", "text_tokens=64,1024"]
    result = CliRunner().invoke(cli, [*args, "--gpu", "H200", "--format", "html", "-o", str(page_path)])
    assert result.exit_code == 0, result.output
    page, seen, requests = open_page(browser, page_path)
    assert [m for m in seen if m[0] in ("error", "warning", "pageerror")] == []
    assert requests == [page_path.as_uri()]
    for name in ("chart-time", "chart-generation", "chart-intensity", "chart-kv"):
        assert len(page.locator(f"#{name}").screenshot()) > 8_000, name
    # 8 stages x 2 prompt lengths, each a line over the 7 batches; the ridge line on the intensity chart
    assert page.locator("#chart-time .scatterlayer .trace").count() == 16
    assert page.locator("#chart-time .scatterlayer .trace").first.locator(".point").count() == 7
    assert page.locator("#chart-intensity .scatterlayer .trace").count() == 17
    assert page.locator("#chart-generation .scatterlayer .trace").count() == 4  # TTFT and TPOT x 2 prompts
    xtype = page.evaluate("() => document.getElementById('chart-time').layout.xaxis.type")
    assert xtype == "log"
    assert "decode stays memory-bound" in page.locator("body").inner_text()
