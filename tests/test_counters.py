"""The torch and fvcore FLOP counters: against each other, a hand count, and a real generate()."""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fvcore")

from tiny_models import tiny_spec  # noqa: E402

from stagemfu.analyzer.fvcore_count import count_fvcore, reduce_depth  # noqa: E402
from stagemfu.analyzer.torch_count import count_torch, flop_counter  # noqa: E402
from stagemfu.errors import MissingDependencyError  # noqa: E402
from stagemfu.models import Inputs, load_model_spec, resolve_shapes  # noqa: E402
from stagemfu.models.build import build_model, example_inputs  # noqa: E402

# fvcore's generic einsum handle (SAM's relative-position terms) rounds to 4 significant digits;
# every other stage must agree exactly.
EINSUM_ROUNDING = {"sam": 1e-4, "vision": 1e-4}

CASES = {
    "llama-gqa": ("llama", Inputs(text_tokens=9, new_tokens=4, batch=2, dtype="fp32")),
    "mixtral-moe": ("mixtral", Inputs(text_tokens=9, new_tokens=4, dtype="fp32")),
    "deepseek_v2-mla-moe": ("deepseek_v2", Inputs(text_tokens=9, new_tokens=3, dtype="fp32")),
    "deepseek_v3-mla-moe": ("deepseek_v3", Inputs(text_tokens=9, new_tokens=3, full_logits=True, dtype="fp32")),
    "deepseek-ocr-gundam": ("deepseek-ocr", Inputs(mode="gundam", crops=2, text_tokens=5, new_tokens=3, batch=2)),
    "deepseek-ocr2-gundam": (
        "deepseek-ocr2",
        Inputs(mode="gundam", crops=3, text_tokens=5, new_tokens=3, dtype="fp32"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_and_fvcore_agree_on_every_stage(tmp_path, case):
    model, inputs = CASES[case]
    spec = tiny_spec(tmp_path, model)
    shapes = resolve_shapes(spec, inputs)
    torch_count, fvcore_count = count_torch(spec, shapes), count_fvcore(spec, shapes)
    assert torch_count.flops.keys() == fvcore_count.flops.keys()
    assert all(type(flops) is int for flops in [*torch_count.flops.values(), *fvcore_count.flops.values()])
    for stage, flops in torch_count.flops.items():
        assert fvcore_count.flops[stage] == pytest.approx(flops, rel=EINSUM_ROUNDING.get(stage, 0)), stage


def test_expert_sizes_no_gpu_kernel_would_take_still_count(tmp_path):
    """90-wide experts (not a multiple of 8): grouped_mm would refuse them; the count does not care."""
    spec = tiny_spec(tmp_path, "mixtral", hidden_size=72, intermediate_size=90)
    shapes = resolve_shapes(spec, Inputs(text_tokens=7, new_tokens=2))
    assert count_torch(spec, shapes).flops == count_fvcore(spec, shapes).flops


@pytest.mark.parametrize("case", ["llama-gqa", "mixtral-moe", "deepseek_v2-mla-moe", "deepseek-ocr-gundam"])
def test_counts_add_up_to_what_a_real_generate_executes(tmp_path, case):
    """FlopCounterMode around a real CPU generate() (random weights, so random MoE routing, eager
    attention and experts) sees exactly vision + prefill + every decode step: this checks lm_head on
    the last prompt position only, the KV-cache length of each step and decode = steps x mean."""
    model_name, inputs = CASES[case]
    spec = tiny_spec(tmp_path, model_name)
    shapes = resolve_shapes(spec, inputs)
    counted = count_torch(spec, shapes).flops
    model = build_model(spec, device="cpu", dtype=inputs.dtype, attn="eager", experts="eager")
    kwargs = example_inputs(spec, shapes, device="cpu")
    new = inputs.new_tokens
    with flop_counter() as counter, torch.no_grad():
        model.generate(**kwargs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    head = 2 * model.config.get_text_config().hidden_size * model.config.get_text_config().vocab_size
    extra_logits = head * inputs.batch * (shapes.prompt_tokens - 1) if inputs.full_logits else 0
    expected = counted.get("vision", 0) + counted["prefill"] - extra_logits + counted["decode"]
    assert counter.get_total_flops() == expected


def test_one_layer_dense_lm_matches_a_hand_count(tmp_path):
    hidden, intermediate, vocab, prompt = 64, 96, 1000, 9
    spec = tiny_spec(tmp_path, "llama", num_hidden_layers=1, num_key_value_heads=4)
    shapes = resolve_shapes(spec, Inputs(text_tokens=prompt, new_tokens=3))

    def forward(tokens: int, context: int) -> int:
        projections = 2 * tokens * 4 * hidden * hidden  # q, k, v, o (4 heads, 4 kv heads)
        attention = 2 * 2 * tokens * context * hidden  # QK^T and PV over the full score matrix
        mlp = 2 * tokens * 3 * hidden * intermediate  # gate, up, down
        return projections + attention + mlp + 2 * hidden * vocab  # lm_head on one position

    expected = {
        "prefill": forward(prompt, prompt),
        "decode_first": forward(1, prompt + 1),
        "decode_last": forward(1, prompt + 2),
        "decode": forward(1, prompt + 1) + forward(1, prompt + 2),
    }
    assert count_torch(spec, shapes).flops == expected
    assert count_fvcore(spec, shapes).flops == expected


def test_routed_expert_work_is_tokens_times_top_k_whatever_the_routing(tmp_path):
    spec = tiny_spec(tmp_path, "mixtral", num_hidden_layers=1)
    model = build_model(spec, device="cpu", dtype="fp32", experts="eager")
    tokens, hidden, intermediate, top_k = 37, 64, 96, 2
    for seed in (0, 1):
        torch.manual_seed(seed)
        model.model.layers[0].mlp.gate.weight.data.normal_()
        with flop_counter() as counter, torch.no_grad():
            model.model(inputs_embeds=torch.randn(1, tokens, hidden))
        experts = counter.get_flop_counts()["MixtralModel.layers.0.mlp.experts"]
        assert sum(experts.values()) == 2 * tokens * top_k * 3 * hidden * intermediate


def test_depth_reduction_keeps_one_layer_of_each_kind():
    model = build_model(load_model_spec("deepseek-ocr"), dtype="fp32")
    reduced = reduce_depth(model)
    sam = model.model.vision_tower.sam_encoder.layers
    assert [layer.window_size for layer in sam] == [14, 0]  # one windowed, one global
    assert [reduced.repeats[id(layer)] for layer in sam] == [8, 4]
    assert [reduced.repeats[id(layer)] for layer in model.model.vision_tower.clip_encoder.encoder.layers] == [24]
    text = model.model.language_model.layers
    assert [type(layer.mlp).__name__ for layer in text] == ["DeepseekOcr2TextMLP", "DeepseekOcr2TextMoe"]
    assert [reduced.repeats[id(layer)] for layer in text] == [1, 11]
    assert [layer.self_attn.layer_idx for layer in text] == [0, 1]


def sam_vit_b_flops(side: int, last_conv: int = 1024, window: int = 14, width: int = 768, heads: int = 12) -> int:
    """Hand count of SAM ViT-B (+ neck and the two stride-2 convs, 256->512->last_conv) on one image.

    Windowed layers pad the 16-pixel patch grid to a multiple of the window and run q/k/v/proj and
    attention on the padded windows; the MLP runs on the unpadded grid. Relative-position terms are
    one (tokens x rel side) product per head for heights and one for widths.
    """
    grid = side // 16
    tokens, head = grid * grid, width // heads
    padded = -(-grid // window) * window
    windows = (padded // window) ** 2

    def layer(groups: int, group_tokens: int, rel_side: int) -> int:
        attended = groups * group_tokens
        projections = 2 * attended * width * 4 * width  # qkv (3 x width) and proj
        scores = groups * heads * 2 * 2 * group_tokens * group_tokens * head  # QK^T and PV
        relative = groups * heads * 2 * 2 * group_tokens * rel_side * head  # height and width terms
        return projections + scores + relative + 2 * tokens * 2 * width * 4 * width  # MLP, 4x

    patch_embed = 2 * tokens * width * 3 * 16 * 16
    neck = 2 * tokens * width * 256 + 2 * tokens * 256 * 256 * 9
    convs = 2 * (tokens // 4) * 512 * 256 * 9 + 2 * (tokens // 16) * last_conv * 512 * 9
    blocks = 8 * layer(windows, window * window, window) + 4 * layer(1, tokens, grid)
    return patch_embed + blocks + neck + convs


@pytest.mark.parametrize(("mode", "side"), [("base", 1024), ("small", 640)])
def test_published_sam_matches_a_hand_count_on_padded_windows(mode, side):
    spec = load_model_spec("deepseek-ocr")
    flops = count_torch(spec, resolve_shapes(spec, Inputs(mode=mode))).flops
    assert flops["sam"] == sam_vit_b_flops(side)
    assert flops["vision"] == flops["sam"] + flops["clip"] + flops["projector"]


def test_published_ocr2_gundam_stages_add_up():
    spec = load_model_spec("deepseek-ocr2")
    flops = count_torch(spec, resolve_shapes(spec, Inputs(mode="gundam", crops=6))).flops
    assert flops["sam"] == sam_vit_b_flops(1024, last_conv=896) + 6 * sam_vit_b_flops(768, last_conv=896)
    assert flops["vision"] == flops["sam"] + flops["encoder"] + flops["projector"]
    assert flops["decode"] == 31 * (flops["decode_first"] + flops["decode_last"]) // 2


def test_fvcore_leaves_out_a_model_too_large_to_materialize(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, "mixtral")
    monkeypatch.setattr("stagemfu.analyzer.fvcore_count.MAX_PARAMETER_BYTES", 1000)
    result = count_fvcore(spec, resolve_shapes(spec, Inputs()))
    assert result.flops == {}
    assert "not run" in result.notes[0]


def test_missing_fvcore_names_the_extra_to_install(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, "llama")
    monkeypatch.setitem(sys.modules, "fvcore", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'stagemfu\[model\]'"):
        count_fvcore(spec, resolve_shapes(spec, Inputs()))
