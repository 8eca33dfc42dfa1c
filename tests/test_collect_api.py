"""The NVTX stage API: ranges and their nesting, recorded through a stub sink on CPU models."""

from __future__ import annotations

import subprocess
import sys

import pytest
from collect_helpers import Recorder

from stagemfu.collect import api
from stagemfu.errors import MissingDependencyError, ModelConfigError


@pytest.fixture
def recorder():
    with api.recording_to(Recorder()) as rec:
        yield rec
    assert rec.stack == [], "a range was left open"


def test_stage_nests_as_context_manager_and_decorator(recorder):
    @api.stage("decode")
    def step(x):
        return x + 1

    with api.stage("measured"):
        with api.stage("prefill"):
            pass
        assert [step(i) for i in range(2)] == [1, 2]
    assert recorder.paths == ["measured", "measured/prefill", "measured/decode", "measured/decode"]
    assert step.__name__ == "step"


def test_a_failing_block_still_closes_its_range(recorder):
    with pytest.raises(ValueError), api.stage("measured"):
        raise ValueError("boom")
    assert recorder.stack == []


def test_import_stagemfu_loads_neither_torch_nor_nvtx():
    code = (
        "import sys, stagemfu, stagemfu.collect, stagemfu.cli; "
        "assert stagemfu.stage is stagemfu.collect.api.stage; "
        "print(sorted(m for m in ('torch', 'nvtx', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_a_profiler_nvtx_ranges_are_no_ops():
    pytest.importorskip("nvtx")
    sink = api.NvtxSink()
    assert sink.attached is False  # no nsys injection library in the test process
    sink.push("prefill")
    sink.pop()


def test_missing_nvtx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvtx", None)
    with pytest.raises(MissingDependencyError, match=r"stagemfu\[model\]"):
        api.NvtxSink()


# --------------------------------------------------------------------------------------------
# Models (torch, transformers: the [model] extra)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def tower(torch):
    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sam = torch.nn.Linear(4, 4)
            self.clip = torch.nn.Linear(4, 4)

        def features(self, x):
            return self.clip(self.sam(x))

        def forward(self, x):
            return self.features(x) + self.features(x)

    return Tower()


def test_instrument_ranges_modules_and_methods_and_removes_them(recorder, torch, tower):
    with api.instrument(tower, {"vision": "features", "sam": "sam", "clip": "clip"}, sync=True):
        tower(torch.ones(1, 4))
    assert recorder.paths == ["vision", "vision/sam", "vision/clip"] * 2
    recorder.paths.clear()
    tower(torch.ones(1, 4))
    assert recorder.paths == [] and "features" not in vars(tower)


def test_module_range_closes_when_forward_raises(recorder, torch, tower):
    with api.instrument(tower, {"sam": "sam"}), pytest.raises(RuntimeError):
        tower.sam(torch.ones(1, 3))  # wrong width
    assert recorder.stack == []


@pytest.mark.parametrize("path", ["vision_tower", "sam.weight.nothing"])
def test_unknown_stage_path_is_one_line_error(tower, path):
    with pytest.raises(ModelConfigError, match="stage 'vision'"):
        api.instrument(tower, {"vision": path})


def test_without_a_profiler_no_hooks_are_installed(torch, tower):
    class Unattached(Recorder):
        attached = False

    with api.recording_to(Unattached()) as rec:
        with api.instrument(tower, {"vision": "features", "sam": "sam"}):
            assert not tower.sam._forward_pre_hooks and "features" not in vars(tower)
            with api.generation_stages(tower) as steps:
                tower(torch.ones(1, 4))
        with pytest.raises(ModelConfigError):  # paths are still checked
            api.instrument(tower, {"vision": "nothing"})
    assert rec.paths == [] and steps.steps == 0


def test_generate_splits_into_prefill_and_one_decode_per_token_after_the_first(recorder, torch):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 128, (2, 6))
    with api.instrument(model, {"embed": "model.embed_tokens"}), torch.inference_mode():
        for name in ("warmup", "measured"):
            with api.stage(name), api.generation_stages(model) as steps:
                out = model.generate(input_ids=ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
            assert out.shape == (2, 11) and steps.steps == 5
    expected = []
    for name in ("warmup", "measured"):
        expected += [name, f"{name}/prefill", f"{name}/prefill/embed"]
        expected += [f"{name}/decode", f"{name}/decode/embed"] * 4
    assert recorder.paths == expected
