"""The cost of postprocess grows with ranges and operations, never by Python work per distinct name.

A trace recorded under PyTorch's ``emit_nvtx`` names every range after one operator call
(``aten::mm, seq = 7, op_id = 7, sizes = ...``): as many distinct names as ranges. Work done in
Python once per row (``to_dicts``, ``iter_rows``, a loop, a ``map_elements``) made the JSON of
161 k such names take 27 s and the SQLite output 63 s (docs/benchmarks.md). A timed test would
flake on a shared machine, so this one counts what cannot flake: the Python function calls the
whole command makes, which must not grow with the number of distinct names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import launch

from stagemfu.cli import cli
from stagemfu.report.render import json_stream

KERNELS = ("ampere_sgemm_128x64_nn", "elementwise_kernel", "flash_fwd_kernel")
SMALL, LARGE = 1_000, 4_000


def op_range_trace(make_trace: Any, directory: Path, calls: int) -> Path:
    """``measured`` > ``decode`` steps of 100 operator calls, each a distinct ``emit_nvtx`` range
    name with a nested call of its own (a path per call) and one kernel."""
    ranges = [{"start": 0, "end": 100 * calls + 100, "text": "measured"}]
    launches = []
    for step in range(calls // 100):
        ranges.append({"start": 10_000 * step + 1, "end": 10_000 * step + 9_999, "text": "decode"})
    for i in range(calls):
        t = 100 * i + 10
        seq = f"seq = {i}, op_id = {2 * i}, sizes = [[{i % 97}, 2048], [2048, 2048]], input_op_ids = [({i},0)]"
        ranges.append({"start": t, "end": t + 50, "text": f"aten::linear, {seq}"})
        ranges.append({"start": t + 1, "end": t + 40, "text": f"aten::addmm, op_id = {2 * i + 1}, sizes = [[{i}]]"})
        launches.append(launch(i + 1, (t + 2, t + 3), (t + 5, t + 9), name=KERNELS[i % len(KERNELS)]))
    return make_trace(directory, ranges=ranges, calls=[c for c, _ in launches], kernels=[k for _, k in launches])


def python_calls(argv: list[str]) -> int:
    """Python function calls (and calls of built-in functions) made while the command runs."""
    calls = 0

    def count(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    runner = CliRunner()
    sys.setprofile(count)
    try:
        result = runner.invoke(cli, argv, catch_exceptions=False)
    finally:
        sys.setprofile(None)
    assert result.exit_code == 0, result.output[-2000:]
    return calls


@pytest.mark.parametrize(
    "options",
    [
        ["--format", "json", "--instances"],
        ["--format", "csv", "--table", "paths"],
        ["--format", "md"],
        ["--format", "table", "--full-names"],
        ["--format", "sqlite"],
    ],
    ids=["json", "csv", "md", "table", "sqlite"],
)
def test_python_work_does_not_grow_with_distinct_range_names(make_trace, tmp_path, monkeypatch, options):
    monkeypatch.setattr(json_stream, "BATCH_ROWS", 10**6)  # a few Python calls per batch are not per row
    counts = {}
    for n in (SMALL, LARGE):
        argv = ["postprocess", str(op_range_trace(make_trace, tmp_path, n)), *options, "-o", str(tmp_path / f"out-{n}")]
        python_calls(argv)  # the first run imports modules and fills caches, once per process
        counts[n] = python_calls(argv)
    # 3,000 more distinct names (6,000 more ranges, each in its own path): a Python call per row of
    # one table would add thousands.
    assert counts[LARGE] - counts[SMALL] < (LARGE - SMALL) // 10, counts
