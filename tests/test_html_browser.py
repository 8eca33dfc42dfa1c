"""The HTML report in a real headless Chromium: loads offline without console errors, charts render,
and hostile NVTX names are shown as text, never run.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package
(its driver only; no browser download): ``make test`` installs both.
"""

from __future__ import annotations

import os
import shutil

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
CHARTS = ("chart-mfu", "chart-timeline", "chart-decode", "chart-categories")

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
    assert page.locator("#chart-mfu .bars .point").count() == 3 * 5  # kernel, busy, wall x 5 stages
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
