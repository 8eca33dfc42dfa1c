"""FLOPs of one executed aten op from the shapes of its inputs, one small function per op family.

A program run under ``torch.autograd.profiler.emit_nvtx(record_shapes=True)`` leaves one NVTX
range per aten op with the sizes of its inputs (:mod:`stagemfu.postprocess.op_shapes` reads
them). This registry turns such a record into FLOPs without torch, so the core install can count
any PyTorch program from its trace. Keys are op names as the trace spells them (``aten::mm``).

Conventions, those of ``torch.utils.flop_counter`` (the tests check every formula against it):

- 2 FLOPs per multiply-accumulate; only matrix products, convolutions and attention count. Bias
  adds, norms, activations, softmax and other elementwise work are left out.
- Matrix-vector products (``mv``, ``addmv``, ``dot``) count as the matrix products they are.
  torch's counter has no entry for them, so a ``matmul`` that torch happens to run as ``mv``
  would count 0 there and its real work here; the tests extend torch's count with ``mm_flop``
  over the same products so both sides agree.
- Attention counts the full ``q_len x kv_len`` score matrix (a causal kernel skips about half of
  it): ``QK^T`` and ``PV`` forward; backward recomputes the scores and forms four more products,
  2.5x the forward when the value and key head sizes are equal. Key/value heads may be fewer
  than query heads (grouped-query attention): each query head attends over its group's keys.
- A formula sees the inputs as recorded: one shape per argument, ``()`` for an argument that is
  not a tensor (a stride, a flag, an absent bias); tensor lists are flattened in place. Only
  convolutions need an output shape (stride and padding are not recorded): the caller passes the
  shape a later op saw the output with, or ``None`` when no op used it.

Composite ops reach the GPU through the ops they call, which have ranges of their own: ``linear``
through ``addmm``/``mm``, ``matmul`` and ``einsum`` through ``mm``/``bmm``, ``conv2d`` through
``convolution`` and the backend's convolution. The caller counts an op only when no registered op
runs inside it (:func:`stagemfu.report.op_flops.count_op_flops`), so ``linear`` and ``matmul``
count themselves only when nothing below them has a range. ``einsum`` has no formula: its
contractions are the ``bmm`` calls it makes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Shape = tuple[int, ...]
# (input shapes as recorded, the first output's shape or None) -> FLOPs
OpFormula = Callable[[Sequence[Shape], "Shape | None"], int]

OP_FORMULAS: dict[str, OpFormula] = {}
OUTPUT_OPS: set[str] = set()  # ops whose formula needs the output's shape
MATMUL_RANKS = tuple(range(1, 9))  # operand ranks matmul and linear accept here


class OpShapeError(ValueError):
    """The recorded shapes do not fit the op (wrong rank, mismatched dimensions, output unknown)."""


def op_formula(*ops: str, needs_output: bool = False) -> Callable[[OpFormula], OpFormula]:
    """Register ``fn`` as the FLOP formula of each op in ``ops``; a second formula for one op is an error.

    ``needs_output``: the formula reads the output's shape, which the caller then looks up.
    """

    def register(fn: OpFormula) -> OpFormula:
        for op in ops:
            if OP_FORMULAS.setdefault(op, fn) is not fn:
                raise ValueError(f"two FLOP formulas for op {op!r}")
            if needs_output:
                OUTPUT_OPS.add(op)
        return fn

    return register


def _arg(inputs: Sequence[Shape], index: int, rank: int | tuple[int, ...], op: str) -> Shape:
    """Input ``index`` as a tensor shape of the given rank(s); OpShapeError otherwise."""
    ranks = (rank,) if isinstance(rank, int) else rank
    if index >= len(inputs) or len(inputs[index]) not in ranks:
        got = list(inputs[index]) if index < len(inputs) else "nothing"
        raise OpShapeError(f"{op}: input {index} must be a {' or '.join(map(str, ranks))}-D tensor, got {got}")
    return tuple(inputs[index])


def _match(op: str, what: str, a: int, b: int) -> None:
    if a != b:
        raise OpShapeError(f"{op}: {what} differ ({a} and {b})")


def mm_count(a: Shape, b: Shape, op: str = "mm") -> int:
    """``(m, k) @ (k, n)``: ``m * n`` dot products of length ``k``."""
    (m, k), (k2, n) = a, b
    _match(op, "inner dimensions", k, k2)
    return 2 * m * k * n


def bmm_count(a: Shape, b: Shape, op: str = "bmm") -> int:
    """``(b, m, k) @ (b, k, n)``: ``b`` independent products."""
    _match(op, "batch dimensions", a[0], b[0])
    return a[0] * mm_count(a[1:], b[1:], op)


@op_formula("aten::mm", "aten::_scaled_mm")
def mm(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``mm(a, b)``; ``_scaled_mm(a, b, scale_a, scale_b, ...)`` (fp8) multiplies the same way."""
    return mm_count(_arg(inputs, 0, 2, "mm"), _arg(inputs, 1, 2, "mm"))


@op_formula("aten::addmm", "aten::_addmm_activation")
def addmm(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``addmm(bias, a, b)``: the product of ``a`` and ``b``; the bias add is not counted."""
    return mm_count(_arg(inputs, 1, 2, "addmm"), _arg(inputs, 2, 2, "addmm"), "addmm")


@op_formula("aten::bmm")
def bmm(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``bmm(a, b)`` of ``(b, m, k)`` and ``(b, k, n)``."""
    return bmm_count(_arg(inputs, 0, 3, "bmm"), _arg(inputs, 1, 3, "bmm"))


@op_formula("aten::baddbmm")
def baddbmm(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``baddbmm(bias, a, b)``: the batched product; the add is not counted."""
    return bmm_count(_arg(inputs, 1, 3, "baddbmm"), _arg(inputs, 2, 3, "baddbmm"), "baddbmm")


@op_formula("aten::matmul")
def matmul(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``matmul(a, b)`` with numpy's rules: a 1-D left operand is a row, a 1-D right operand a
    column, and the dimensions before the last two broadcast.

    Counted only when nothing inside it has a range (it normally runs as ``mm`` or ``bmm``).
    """
    a = _arg(inputs, 0, MATMUL_RANKS, "matmul")
    b = _arg(inputs, 1, MATMUL_RANKS, "matmul")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    batch = _broadcast(a2[:-2], b2[:-2], "matmul")
    return math.prod(batch) * mm_count(a2[-2:], b2[-2:], "matmul")


def _broadcast(a: Shape, b: Shape, op: str) -> Shape:
    """numpy broadcasting of two shapes, aligned on the right."""
    width = max(len(a), len(b))
    a, b = (1,) * (width - len(a)) + a, (1,) * (width - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise OpShapeError(f"{op}: batch dimensions {list(a)} and {list(b)} do not broadcast")
        out.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(out)


@op_formula("aten::linear")
def linear(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``linear(x, weight, bias)``: every row of ``x`` (``(..., in)``) through ``weight`` ``(out, in)``.

    Counted only when nothing inside it has a range (it normally runs as ``addmm`` or ``mm``).
    """
    x = _arg(inputs, 0, MATMUL_RANKS, "linear")
    w = _arg(inputs, 1, (1, 2), "linear")
    _match("linear", "input features", x[-1], w[-1])
    outputs = w[0] if len(w) == 2 else 1  # a 1-D weight makes one output feature
    return 2 * math.prod(x[:-1]) * x[-1] * outputs


@op_formula("aten::mv")
def mv(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``mv(a, v)``: ``(n, k) @ (k,)``, one dot product of length ``k`` per row."""
    (n, k), v = _arg(inputs, 0, 2, "mv"), _arg(inputs, 1, 1, "mv")
    return mm_count((n, k), (v[0], 1), "mv")


@op_formula("aten::addmv")
def addmv(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``addmv(bias, a, v)``: the matrix-vector product; the add is not counted."""
    return mv(inputs[1:], output)


@op_formula("aten::dot", "aten::vdot")
def dot(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``dot(a, b)`` of two vectors of length ``k``."""
    (k,), (k2,) = _arg(inputs, 0, 1, "dot"), _arg(inputs, 1, 1, "dot")
    return mm_count((1, k), (k2, 1), "dot")


# ---------------------------------------------------------------------------------------------
# Convolutions: x (N, C_in, *spatial), weight (C_out, C_in/groups, *kernel), or for a transposed
# convolution (C_in, C_out/groups, *kernel). torch's rule: every weight element meets every
# output position (input position, when transposed) of every sample.


def conv_count(x: Shape, w: Shape, positions: int) -> int:
    """``2 * batch * w[0] * w[1] * kernel volume * positions`` (torch's ``conv_flop_count``)."""
    return 2 * x[0] * w[0] * w[1] * math.prod(w[2:]) * positions


def _conv_args(inputs: Sequence[Shape], op: str) -> tuple[Shape, Shape]:
    x = _arg(inputs, 0, (3, 4, 5), op)
    w = _arg(inputs, 1, len(x), op)
    return x, w


def _output_of(output: Shape | None, x: Shape, op: str) -> Shape:
    if output is None:
        raise OpShapeError(
            f"{op}: the output shape is needed (stride and padding are not recorded) and no later op used the output"
        )
    if len(output) != len(x):
        raise OpShapeError(f"{op}: output {list(output)} has another rank than input {list(x)}")
    return output


@op_formula(
    "aten::cudnn_convolution",
    "aten::cudnn_convolution_relu",
    "aten::cudnn_convolution_add_relu",
    "aten::miopen_convolution",
    "aten::miopen_depthwise_convolution",
    "aten::miopen_convolution_relu",
    "aten::miopen_convolution_add_relu",
    "aten::mkldnn_convolution",
    "aten::_conv_depthwise2d",
    "aten::conv_depthwise3d",
    "aten::slow_conv_dilated2d",
    "aten::slow_conv_dilated3d",
    "aten::_slow_conv2d_forward",
    "aten::slow_conv3d_forward",
    "aten::_nnpack_spatial_convolution",
    "aten::thnn_conv2d",
    needs_output=True,
)
def convolution_forward(inputs: Sequence[Shape], output: Shape | None) -> int:
    """A backend's (non-transposed) convolution: one kernel-volume dot product per weight row and
    output position."""
    x, w = _conv_args(inputs, "convolution")
    return conv_count(x, w, math.prod(_output_of(output, x, "convolution")[2:]))


@op_formula(
    "aten::cudnn_convolution_transpose",
    "aten::miopen_convolution_transpose",
    "aten::slow_conv_transpose2d",
    "aten::slow_conv_transpose3d",
)
def convolution_transpose(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """A backend's transposed convolution: torch counts it over the input positions."""
    x, w = _conv_args(inputs, "convolution_transpose")
    return conv_count(x, w, math.prod(x[2:]))


@op_formula("aten::convolution", "aten::_convolution", "aten::convolution_overrideable", needs_output=True)
def convolution(inputs: Sequence[Shape], output: Shape | None) -> int:
    """``convolution(x, weight, bias, stride, padding, dilation, transposed, ...)``, counted when no
    backend convolution below it has a range.

    ``transposed`` is a flag, not recorded: the op is read as transposed when its output channels
    show it (a plain convolution's output has ``weight[0]`` channels), else as plain. A transposed
    convolution with as many output as input channels is thus read as plain; the backend ops,
    which have ranges of their own on every GPU backend, carry the distinction in their names.
    """
    x, w = _conv_args(inputs, "convolution")
    out = _output_of(output, x, "convolution")
    return conv_count(x, w, math.prod(x[2:] if out[1] != w[0] else out[2:]))


@op_formula("aten::convolution_backward", "aten::convolution_backward_overrideable")
def convolution_backward(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``convolution_backward(grad_out, x, weight, ...)``: the input gradient and the weight gradient.

    torch counts each gradient that ``output_mask`` asks for; the mask is not recorded, so both
    count (the first layer of a network usually skips its input gradient: a small overcount).
    Whether the convolution was transposed is read from the channels as in :func:`convolution`.
    """
    grad, x = _arg(inputs, 0, (3, 4, 5), "convolution_backward"), _arg(inputs, 1, (3, 4, 5), "convolution_backward")
    w = _arg(inputs, 2, len(x), "convolution_backward")
    if len(grad) != len(x):
        raise OpShapeError(f"convolution_backward: grad_output {list(grad)} and input {list(x)} differ in rank")
    positions = math.prod(x[2:] if grad[1] != w[0] else grad[2:])
    grad_input = conv_count(x, w, positions)
    grad_weight = 2 * x[0] * x[1] * grad[1] * math.prod(w[2:]) * positions
    return grad_input + grad_weight


# ---------------------------------------------------------------------------------------------
# Attention: q (B, H_q, S_q, D), k (B, H_kv, S_k, D), v (B, H_kv, S_k, D_v), H_kv dividing H_q.


def _attention_args(inputs: Sequence[Shape], first: int, op: str) -> tuple[Shape, Shape, Shape]:
    q, k, v = (_arg(inputs, first + i, 4, op) for i in range(3))
    b, h_q, _, d = q
    if not (b == k[0] == v[0] and k[1] == v[1] and d == k[3] and k[2] == v[2]):
        raise OpShapeError(f"{op}: query {list(q)}, key {list(k)} and value {list(v)} do not fit together")
    if k[1] == 0 or h_q % k[1]:
        raise OpShapeError(f"{op}: {h_q} query heads are not a multiple of {k[1]} key/value heads")
    return q, k, v


def attention_count(q: Shape, k: Shape, v: Shape) -> int:
    """``softmax(Q K^T) V`` over all query heads: ``QK^T`` over ``D``, ``PV`` over ``D_v``."""
    b, h, s_q, d = q
    return 2 * b * h * s_q * k[2] * (d + v[3])


def attention_backward_count(q: Shape, k: Shape, v: Shape) -> int:
    """Scores recomputed (``QK^T``), then ``dP = dO V^T``, ``dV = P^T dO``, ``dQ = dS K``, ``dK = dS^T Q``."""
    b, h, s_q, d = q
    return 2 * b * h * s_q * k[2] * (3 * d + 2 * v[3])


@op_formula(
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_fused_attention_overrideable",
)
def sdpa(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """Fused scaled-dot-product attention ``(query, key, value, ...)``; causal masking not discounted."""
    return attention_count(*_attention_args(inputs, 0, "scaled_dot_product_attention"))


@op_formula(
    "aten::_scaled_dot_product_flash_attention_backward",
    "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_scaled_dot_product_cudnn_attention_backward",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_fused_attention_overrideable_backward",
)
def sdpa_backward(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """Its backward ``(grad_out, query, key, value, ...)``: 2.5x the forward for equal head sizes."""
    q, k, v = _attention_args(inputs, 1, "scaled_dot_product_attention_backward")
    grad = _arg(inputs, 0, 4, "scaled_dot_product_attention_backward")
    if grad[:3] != q[:3] or grad[3] != v[3]:
        raise OpShapeError(f"scaled_dot_product_attention_backward: grad_out {list(grad)} does not fit query {list(q)}")
    return attention_backward_count(q, k, v)


@op_formula("aten::_grouped_mm", "aten::grouped_mm", "aten::_scaled_grouped_mm")
def grouped_mm(inputs: Sequence[Shape], output: Shape | None = None) -> int:
    """``_grouped_mm(a, b, offs, ...)``: one product per group (MoE experts), groups cut by ``offs``.

    2-D x 3-D: the rows of ``a`` ``(tokens, k)`` split among ``b``'s ``(groups, k, n)`` matrices;
    3-D x 2-D: ``b``'s columns split among ``a``'s matrices; 2-D x 2-D: the inner dimension split
    (one ``(m, n)`` output per group); 3-D x 3-D: a batched product. Every row, column or inner
    index is taken to belong to a group (``offs`` ends at the dimension's size), as MoE layers do.
    """
    a = _arg(inputs, 0, (2, 3), "grouped_mm")
    b = _arg(inputs, 1, (2, 3), "grouped_mm")
    if len(a) == 3 and len(b) == 3:
        return bmm_count(a, b, "grouped_mm")
    _match("grouped_mm", "inner dimensions", a[-1], b[-2])
    return mm_count(a[-2:], b[-2:], "grouped_mm")
