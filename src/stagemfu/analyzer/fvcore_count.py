"""FLOPs per stage from fvcore's ``FlopCountAnalysis``, scaled up from a depth-reduced real forward.

fvcore traces a real forward (``torch.jit``), which a full model on a 2-core CPU cannot afford. So
the model is built on the meta device, every stack of repeated layers keeps one layer per distinct
kind (same parameter shapes and attention window: SAM windowed / global, CLIP, dense / MoE decoder
layers), and only that copy is materialised on the CPU (bf16, zero weights). fvcore then counts one
global view, one local crop, the prompt and one decode step of a single sample; each kept layer's
count is multiplied by the number of layers of its kind, and views and samples by their number.
That scaling is exact: layers of one kind do the same work, and samples and crops are independent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stagemfu.analyzer.counter_result import CounterResult
from stagemfu.analyzer.torch_count import decode_total
from stagemfu.deps import require
from stagemfu.models.build import (
    build_model,
    language_model,
    require_model_extra,
    resolve,
    stage_modules,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

    from stagemfu.models.presets import ModelSpec
    from stagemfu.models.shapes import Shapes

# The reduced model runs in bf16 whatever the analysed dtype: half the memory of fp32 (SAM's global
# attention bias alone is heads x tokens^2 values), and FLOP counts do not depend on the dtype.
RUN_DTYPE = "bf16"

# Most parameter memory the reduced copy may take. The DeepSeek-OCR models need ~1.3 GB (embedding,
# lm_head and one MoE layer's 64 experts); a very large MoE LM (one DeepSeek-V3 layer holds 256
# experts, ~22 GB) is left to the other counters rather than exhaust the machine.
MAX_PARAMETER_BYTES = 4 * 2**30

NOTES = (
    "fvcore: fvcore's FLOP handles x 2 (fvcore counts one FLOP per multiply-accumulate) over a traced real bf16 "
    "forward on the CPU, with sdpa attention and the eager MoE experts loop",
    "fvcore: has no handle for scaled_dot_product_attention; stagemfu adds one, B*H*L*S*(E+Ev) multiply-adds "
    "over the full score matrix (torch's own sdpa convention: causal masking is not discounted)",
    "fvcore: only its matmul-type handles (linear, matmul, bmm, addmm, einsum, convolution) are used, so it "
    "counts the ops the torch counter counts; norms and other elementwise ops are not counted",
    "fvcore: its generic einsum handle (SAM's relative-position terms) rounds to 4 significant digits",
    "fvcore: one sample, one global view and one local crop are run; counts are multiplied by batch and crops",
    "fvcore: weights are zero: every token still runs top_k experts, so MoE work is tokens x top_k whatever "
    "the routing",
)


@dataclass
class ReducedModel:
    """A depth-reduced model and, for every layer it kept, how many layers of the full model it stands for."""

    model: Any
    repeats: dict[int, int] = field(default_factory=dict)  # id(kept layer) -> layers of its kind
    summary: list[str] = field(default_factory=list)  # one line per layer stack, for the notes


def count_fvcore(spec: ModelSpec, shapes: Shapes) -> CounterResult:
    """FLOPs per stage of one ``generate`` call, by fvcore on a depth-reduced model.

    Parameters
    ----------
    spec
        The model.
    shapes
        The resolved inputs (views, crops, prompt length, batch, new tokens).

    Returns
    -------
    CounterResult
        ``counter="fvcore"``, the same stages as the torch counter; ``notes`` say how the reduced
        counts were scaled and which operators fvcore had no handle for.
    """
    require_fvcore()
    import torch

    from stagemfu.analyzer.stage_calls import LanguageModelCall

    reduced = reduce_depth(build_model(spec, device="meta", dtype=RUN_DTYPE, attn="sdpa", experts="eager"))
    size = sum(p.numel() * p.element_size() for p in reduced.model.parameters())
    if size > MAX_PARAMETER_BYTES:
        return CounterResult(
            counter="fvcore",
            flops={},
            notes=(
                f"fvcore: not run: even its depth-reduced copy holds {size / 2**30:.1f} GiB of weights, more than "
                f"the {MAX_PARAMETER_BYTES / 2**30:.0f} GiB it may materialize on the CPU",
            ),
        )
    backbone, head = language_model(spec, reduced.model)
    materialize(reduced.model)
    kv_shapes = _cache_shapes(backbone)
    inputs = shapes.inputs
    batch, prompt, hidden = inputs.batch, shapes.prompt_tokens, backbone.config.hidden_size
    dtype = torch_dtype(RUN_DTYPE)
    unsupported: set[str] = set()
    flops: dict[str, int] = {}
    if spec.dims.vision is not None:
        flops.update(_vision_flops(spec, shapes, reduced, unsupported))
    logits = prompt if inputs.full_logits else 1
    prefill = LanguageModelCall(backbone, head, logits)
    flops["prefill"] = batch * _count(prefill, (torch.zeros(1, prompt, hidden, dtype=dtype),), reduced, unsupported)[""]
    steps = inputs.new_tokens - 1
    if steps:
        step = LanguageModelCall(backbone, head, 1)

        def decode_step(cached: int) -> int:
            cache = [torch.zeros(*shape[:2], cached, shape[-1], dtype=dtype) for shape in kv_shapes]
            return batch * _count(step, (torch.zeros(1, 1, hidden, dtype=dtype), *cache), reduced, unsupported)[""]

        first, last = decode_step(prompt), decode_step(prompt + steps - 1)
        flops.update(decode_first=first, decode_last=last, decode=decode_total(first, last, steps))
    notes = [*NOTES, f"fvcore: depth-reduced copy: {'; '.join(reduced.summary)}"]
    if steps:
        notes.append("fvcore: decode = steps x (decode_first + decode_last) / 2, as for the torch counter")
    if unsupported:
        notes.append(f"fvcore: ops without a handle, not counted: {', '.join(sorted(unsupported))}")
    return CounterResult(counter="fvcore", flops=flops, notes=tuple(notes))


def require_fvcore() -> None:
    """Raise MissingDependencyError unless fvcore (and the model extra it runs on) can be imported."""
    require_model_extra()
    require("fvcore", needed_for="the fvcore counter")
    with warnings.catch_warnings():  # fvcore.nn scripts a loss function at import; torch deprecates jit.script
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
        import fvcore.nn  # noqa: F401


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: multiply-adds of QK^T and PV.

    Query (B, H, L, E), key (B, Hk, S, E), value (B, Hk, S, Ev); grouped-query heads (Hk < H) do
    the work of H heads. One per multiply-add, as fvcore's other handles.
    """
    from fvcore.nn.jit_handles import get_shape

    batch, heads, queries, width = get_shape(inputs[0])
    keys, value_width = get_shape(inputs[1])[-2], get_shape(inputs[2])[-1]
    return batch * heads * queries * keys * (width + value_width)


def op_handles() -> dict[str, Any]:
    """fvcore's own handles for matmul-type ops, plus one for sdpa.

    fvcore's defaults also count norms, pooling and upsampling; leaving those out makes fvcore count
    the same ops as the torch counter and the analytic formulas.
    """
    from fvcore.nn import jit_handles

    return {
        "aten::addmm": jit_handles.addmm_flop_jit,
        "aten::bmm": jit_handles.bmm_flop_jit,
        "aten::_convolution": jit_handles.conv_flop_jit,
        "aten::einsum": jit_handles.einsum_flop_jit,
        "aten::matmul": jit_handles.matmul_flop_jit,
        "aten::mm": jit_handles.matmul_flop_jit,
        "aten::linear": jit_handles.linear_flop_jit,
        "aten::scaled_dot_product_attention": sdpa_flop_jit,
    }


def reduce_depth(model: torch.nn.Module) -> ReducedModel:
    """Keep, in every ``layers`` stack of ``model``, the first layer of each distinct kind.

    A layer's kind is its class, its parameter names and shapes, and its attention window or type:
    SAM's global layers have larger relative-position tables than its windowed ones, MoE layers
    have expert weights. Kept layers are renumbered (``layer_idx``) so a KV cache indexes them.
    """
    from torch import nn

    reduced = ReducedModel(model)
    for name, stack in list(model.named_modules()):
        if not (name == "layers" or name.endswith(".layers")) or not isinstance(stack, nn.ModuleList):
            continue
        kinds: dict[tuple, list[nn.Module]] = {}
        for layer in stack:
            kinds.setdefault(_layer_kind(layer), []).append(layer)
        kept = [layers[0] for layers in kinds.values()]
        for index, layer in enumerate(kept):
            reduced.repeats[id(layer)] = len(kinds[_layer_kind(layer)])
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = index
        parent = resolve(model, name.rpartition(".")[0]) if "." in name else model
        parent.layers = nn.ModuleList(kept)
        counts = " + ".join(f"1 for {len(layers)}" for layers in kinds.values())
        reduced.summary.append(f"{name}: {counts} layers")
    return reduced


def _layer_kind(layer: torch.nn.Module) -> tuple:
    shapes = tuple((name, tuple(p.shape)) for name, p in layer.named_parameters())
    return type(layer).__name__, shapes, getattr(layer, "window_size", None), getattr(layer, "attention_type", None)


def materialize(model: torch.nn.Module) -> None:
    """Allocate ``model`` (built on meta) on the CPU: zero parameters, buffers as the model initialises them.

    Zero weights are enough to count FLOPs and cost one memset; buffers (rotary frequencies,
    position ids) get their real values, as the forward indexes and multiplies with them.
    """
    import torch

    model.to_empty(device="cpu").requires_grad_(False)  # a traced forward then keeps no activations
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    for module in model.modules():
        if next(module.buffers(recurse=False), None) is not None:
            model._init_weights(module)


def _cache_shapes(backbone: torch.nn.Module) -> list[tuple[int, ...]]:
    """Key and value shapes, layer by layer, of a one-token KV cache of the (reduced) language model."""
    import torch

    embeds = torch.zeros(1, 1, backbone.config.hidden_size, dtype=torch_dtype(RUN_DTYPE))
    with torch.no_grad():
        cache = backbone(inputs_embeds=embeds, use_cache=True).cache
    filled = [layer for layer in cache.layers if layer.keys is not None]  # sized for the full depth
    return [tuple(tensor.shape) for layer in filled for tensor in (layer.keys, layer.values)]


def _vision_flops(spec: ModelSpec, shapes: Shapes, reduced: ReducedModel, unsupported: set[str]) -> dict[str, int]:
    """Vision sub-stages for one global view and one local crop, scaled to the batch and the crops."""
    import torch

    from stagemfu.analyzer.stage_calls import ViewCall

    paths = {stage: path for stage, path in stage_modules(spec, reduced.model).items() if stage != "vision"}
    call = ViewCall(reduced.model, paths["sam"].rpartition(".")[0], paths["projector"])
    views = [(1, shapes.base_size)] + ([(shapes.crops, shapes.local_size)] if shapes.crops else [])
    totals = dict.fromkeys([*paths, "vision"], 0)
    for count, size in views:
        pixels = torch.zeros(1, 3, size, size, dtype=torch_dtype(RUN_DTYPE))
        run = _count(call, (pixels,), reduced, unsupported)
        for stage, path in paths.items():
            totals[stage] += count * run[f"model.{path}"]
        totals["vision"] += count * run[""]
    return {stage: shapes.inputs.batch * value for stage, value in totals.items()}


def _count(call: torch.nn.Module, args: tuple, reduced: ReducedModel, unsupported: set[str]) -> dict[str, int]:
    """fvcore's inclusive count per module name of ``call`` (2 per MAC), each kept layer times its repeats."""
    from fvcore.nn.jit_analysis import JitModelAnalysis

    analysis = JitModelAnalysis(call, args).set_op_handle(**op_handles()).tracer_warnings("none")
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = {name: int(count) for name, count in analysis.by_module().items()}  # einsum's are floats
    unsupported.update(analysis.unsupported_ops())  # op names
    scaled = {name: 2 * count for name, count in by_module.items()}
    for name, module in call.named_modules():
        extra = 2 * by_module.get(name, 0) * (reduced.repeats.get(id(module), 1) - 1)
        if extra:
            for ancestor in _ancestors(name):
                scaled[ancestor] += extra
    return scaled


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["", "a", "a.b", "a.b.c"]``: every module an op of ``name`` also counts toward."""
    parts = name.split(".")
    return [""] + [".".join(parts[: end + 1]) for end in range(len(parts))]
