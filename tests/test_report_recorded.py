"""`stagemfu report` on the built-in model runs recorded on the H100 (tests/fixtures/record_models.sh).

Each recording carries its shapes.json, so the report needs no flags; the analytic counter keeps
these tests fast. They check the join on real traces: every stage found, FLOPs counted once per
generation whatever the number of ranges a stage makes (gundam runs the vision tower twice), vision
inside prefill counted once, and MFU in a plausible range.
"""

from __future__ import annotations

import pytest
from conftest import fixture_trace

from stagemfu import analyzer, report
from stagemfu.models import Inputs, load_model_spec

RUNS = {
    "deepseek_ocr2_base": ("deepseek-ocr2", "encoder", Inputs(mode="base", text_tokens=32, new_tokens=8)),
    "deepseek_ocr2_gundam": ("deepseek-ocr2", "encoder", Inputs(mode="gundam", crops=4, text_tokens=32, new_tokens=8)),
    "deepseek_ocr_base": ("deepseek-ocr", "clip", Inputs(mode="base", text_tokens=32, new_tokens=8)),
    "deepseek_ocr_gundam": ("deepseek-ocr", "clip", Inputs(mode="gundam", crops=6, text_tokens=32, new_tokens=8)),
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def recorded(request):
    name = request.param
    model, encoder, inputs = RUNS[name]
    rep = report.report(fixture_trace(name), counters=("analytic",))
    flops = analyzer.analyze(load_model_spec(model), inputs, counters=("analytic",))
    return name, encoder, rep, flops


def stage_flops(rep) -> dict[str, int]:
    return dict(rep.stages.select("stage", "flops").iter_rows())


def test_every_stage_of_the_run_is_reported(recorded):
    _, encoder, rep, _ = recorded
    assert {"vision", "sam", encoder, "projector", "prefill", "decode", "decode_first", "decode_last"} <= set(
        rep.stages["stage"]
    )


def test_vision_stages_are_counted_once_per_generation_even_when_called_twice(recorded):
    """Gundam runs sam/encoder/projector on the global view and on the crops: two ranges, one count."""
    name, encoder, rep, flops = recorded
    ours = stage_flops(rep)
    theirs = dict(flops.stages.select("stage", "flops").iter_rows())
    for stage in ("vision", "sam", encoder, "projector", "decode"):
        assert ours[stage] == theirs[stage], stage
    assert ours["sam"] + ours[encoder] + ours["projector"] == ours["vision"]
    assert ours["prefill"] == theirs["prefill"] + theirs["vision"]  # the prefill range contains vision


def test_mfu_is_plausible_on_every_base(recorded):
    """Below peak on every base; span holds busy, so its MFU is the lower. (Wall and span are not
    ordered: GPU work launched in a range may end after the range.)"""
    _, _, rep, _ = recorded
    for row in rep.stages.iter_rows(named=True):
        assert all(0 < row[f"mfu_{base}"] < 1 for base in ("wall", "span", "busy", "kernel")), row
        assert row["mfu_span"] <= row["mfu_busy"], row
