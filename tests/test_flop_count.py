"""FLOPs counted at run time (``stagemfu.count_flops``) and counted from op ranges, on real torch
runs on the CPU: a training step and a ``generate`` of a tiny Llama with grouped-query attention.

The op ranges are the CPU profiler's records of the same ops, named as emit_nvtx names them
(``torch_op_ranges``): both counts must agree exactly, stage by stage, with each other and with
``FlopCounterMode`` run by hand. Then the report: ``flops.json`` picked up beside a trace, and
several sources side by side.
"""

from __future__ import annotations

import json
import sys

import pytest
from torch_op_ranges import op_ranges_of

import stagemfu
from stagemfu import report as rp
from stagemfu.errors import FlopsFileError
from stagemfu.schemas import FLOPS as RUN_COUNT_SCHEMA

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

H100 = [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "smCount": 132, "clockRate": 1980000000}]
STAGES = ("step", "forward", "backward", "optimizer")


@pytest.fixture(scope="module")
def llama():
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.randint(0, 256, (2, 12))


def train_step(llama, stage) -> None:
    model, optimizer, ids = llama
    with stage("step"):
        with stage("forward"):
            loss = model(input_ids=ids, labels=ids).loss
        with stage("backward"):
            loss.backward()
        with stage("optimizer"):
            optimizer.step()
            optimizer.zero_grad()


def test_count_flops_writes_each_stage_of_a_training_step(llama, tmp_path):
    with stagemfu.count_flops(tmp_path) as counted:
        train_step(llama, stagemfu.stage)
    doc = json.loads((tmp_path / "flops.json").read_text())
    assert doc["schema"] == RUN_COUNT_SCHEMA and counted.path == tmp_path / "flops.json"
    stages = doc["stages"]
    assert set(stages) == set(STAGES) and all(s["calls"] == 1 for s in stages.values())
    assert stages["step"]["flops"] == stages["forward"]["flops"] + stages["backward"]["flops"] == doc["total_flops"]
    assert stages["optimizer"]["flops"] == 0 and stages["backward"]["flops"] > stages["forward"]["flops"] > 0
    # fused attention, which torch's CPU registry does not count, is counted here: per layer, batch 2,
    # 4 query heads over 2 kv heads, 12 positions, head size 16; backward 2.5x
    attention = 2 * 2 * 4 * 12 * 12 * (16 + 16)
    assert stages["forward"]["ops"]["aten._scaled_dot_product_flash_attention_for_cpu"] == 2 * attention
    with FlopCounterMode(display=False) as plain:
        train_step(llama, stagemfu.stage)
    assert doc["total_flops"] == plain.get_total_flops() + 2 * (attention + attention * 5 // 2)


def test_count_flops_defaults_to_the_collect_output_directory(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEMFU_OUT_DIR", str(tmp_path / "out"))
    with stagemfu.count_flops():
        train_step(llama, stagemfu.stage)
    assert json.loads((tmp_path / "out" / "flops.json").read_text())["stages"]["step"]["calls"] == 1


def test_op_ranges_of_a_real_training_step_count_what_torch_counts(llama, make_trace, tmp_path):
    with stagemfu.count_flops(write=False) as counted:
        train_step(llama, stagemfu.stage)
    ranges = op_ranges_of(lambda: train_step(llama, torch.profiler.record_function), STAGES, backward="backward")
    rep = rp.report(make_trace(tmp_path, ranges=ranges, gpus=H100), op_flops=True)
    ops = dict(rep.stages.select("stage", "flops").iter_rows())
    assert ops == {name: stage["flops"] for name, stage in counted.stages.items()}
    assert not any("left uncounted" in n for n in rep.notes)


def test_generate_counts_prefill_and_every_decode_step(llama, make_trace, tmp_path):
    model = llama[0].eval()
    ids = llama[2][:, :6]

    def generate(stage) -> None:
        with stage("measured"), torch.inference_mode(), stagemfu.generation_stages(model):
            model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    with stagemfu.count_flops(tmp_path) as counted:
        generate(stagemfu.stage)
    assert counted.stages["prefill"]["calls"] == 1 and counted.stages["decode"]["calls"] == 3
    assert counted.stages["measured"]["flops"] == counted.stages["prefill"]["flops"] + counted.stages["decode"]["flops"]
    with FlopCounterMode(display=False) as plain, torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    attention = counted.stages["measured"]["ops"]["aten._scaled_dot_product_flash_attention_for_cpu"]
    assert counted.total == plain.get_total_flops() + attention  # torch's CPU registry misses attention
    model.train()


def test_report_picks_up_the_run_time_count_beside_the_trace(llama, make_trace, tmp_path):
    with stagemfu.count_flops(tmp_path) as counted:
        train_step(llama, stagemfu.stage)
    ranges = [
        {"text": name, "start": 1000 * i, "end": 1000 * i + 500} for i in range(3) for name in ("step", "forward")
    ]
    rep = rp.report(make_trace(tmp_path, ranges=ranges, gpus=H100, name="trace.sqlite"))
    rows = {r["stage"]: r for r in rep.stages.iter_rows(named=True)}
    assert rep.flops.kind == "counted" and rows["forward"]["instances"] == 3
    assert rows["forward"]["flops"] == 3 * counted.stages["forward"]["flops"]  # one call counted, three in the trace


def test_sources_side_by_side_and_their_disagreement_noted(llama, make_trace, tmp_path):
    with stagemfu.count_flops(tmp_path) as counted:
        train_step(llama, stagemfu.stage)
    doc = json.loads((tmp_path / "flops.json").read_text())
    doc["stages"]["backward"]["flops"] = int(counted.stages["backward"]["flops"] * 1.05)
    (tmp_path / "flops.json").write_text(json.dumps(doc))
    ranges = op_ranges_of(lambda: train_step(llama, torch.profiler.record_function), STAGES, backward="backward")
    rep = rp.report(make_trace(tmp_path, ranges=ranges, gpus=H100, name="trace.sqlite"), op_flops=True)
    rows = {r["stage"]: r for r in rep.stages.iter_rows(named=True)}
    assert rep.flops.kind == "ops"
    assert rows["forward"]["flops_counted"] == rows["forward"]["flops_ops"] == rows["forward"]["flops"]
    assert rows["backward"]["flops_counted"] == doc["stages"]["backward"]["flops"]
    flagged = [n for n in rep.notes if "differ from the ops FLOPs used" in n]
    assert len(flagged) == 1 and "'backward': counted FLOPs" in flagged[0] and "+5.0 %" in flagged[0]
    assert "FlopCounterMode" in flagged[0]


def test_a_broken_run_time_count_is_ignored_with_a_note(make_trace, tmp_path):
    bad = {"schema": RUN_COUNT_SCHEMA, "stages": {"step": {"flops": -1, "calls": 1}}}
    (tmp_path / "flops.json").write_text(json.dumps(bad))
    path = make_trace(tmp_path, ranges=[{"text": "step", "start": 0, "end": 5}], gpus=H100, name="t.sqlite")
    with pytest.raises(FlopsFileError, match=r"no FLOPs: .*flops.json: stages.step.flops: must be a non-negative"):
        rp.report(path)
    (tmp_path / "flops.yaml").write_text("step: 100\n")
    rep = rp.report(path, flops_file=tmp_path / "flops.yaml")
    assert rep.flops.kind == "file" and any("ignored" in n and "flops.json" in n for n in rep.notes)


def test_collect_hands_its_output_directory_to_the_program_and_clears_an_old_count(tmp_path, monkeypatch):
    from conftest import FAKE_NSYS

    from stagemfu.collect import collect

    monkeypatch.setenv("NSYS", str(FAKE_NSYS))
    out = tmp_path / "out"
    out.mkdir()
    (out / "flops.json").write_text("{}")  # an earlier run's count must not pass for this run's
    program = "import os, pathlib; pathlib.Path(os.environ['STAGEMFU_OUT_DIR'], 'seen').write_text('yes')"
    result = collect([sys.executable, "-c", program], out_dir=out)
    assert result.exit_status == 0 and (out / "seen").read_text() == "yes" and not (out / "flops.json").exists()
