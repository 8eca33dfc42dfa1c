"""The op-FLOP registry: hand-worked counts, and every formula against torch's own
(``torch.utils.flop_counter.flop_registry``, or ``FlopCounterMode`` over the op on meta tensors
for the composites torch counts through what they call) over hypothesis-generated shapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagemfu.analyzer.op_formulas import (
    OP_FORMULAS,
    OpShapeError,
    addmm,
    bmm,
    convolution,
    convolution_backward,
    convolution_forward,
    convolution_transpose,
    dot,
    grouped_mm,
    linear,
    matmul,
    mm,
    mv,
    op_formula,
    sdpa,
    sdpa_backward,
)

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode, flop_registry, mm_flop  # noqa: E402

aten = torch.ops.aten
dim = st.integers(1, 48)
small = st.integers(1, 6)
EXAMPLES = settings(max_examples=60, deadline=None)
NOT_A_TENSOR: tuple[int, ...] = ()


def meta(*shape: int):
    return torch.empty(*shape, device="meta")


def _as_mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's mm_flop over a matrix-vector product written as matrices (torch counts none of them)."""
    a = (1, *a_shape) if len(a_shape) == 1 else tuple(a_shape)
    return mm_flop(a, (b_shape[0], 1))


# torch may run a matmul as mv or dot, which its registry leaves out; count them as the products they are
MATRIX_VECTOR = {aten.mv: _as_mm, aten.dot: _as_mm, aten.addmv: lambda bias, a, b, *rest, **kw: _as_mm(a, b)}


def counted_by_torch(fn, *tensors) -> int:
    with FlopCounterMode(display=False, custom_mapping=MATRIX_VECTOR) as counter:
        fn(*tensors)
    return counter.get_total_flops()


# --------------------------------------------------------------------------------------------
# By hand


def test_an_op_takes_one_formula():
    with pytest.raises(ValueError, match="two FLOP formulas for op 'aten::mm'"):
        op_formula("aten::mm")(lambda inputs, output: 0)
    assert OP_FORMULAS["aten::mm"] is mm
    assert OP_FORMULAS["aten::addmm"] is addmm


def test_formulas_by_hand():
    assert mm([(4, 3), (3, 5)]) == 2 * 4 * 3 * 5
    assert addmm([(5,), (4, 3), (3, 5)]) == 120
    assert bmm([(2, 4, 3), (2, 3, 5)]) == 240
    assert linear([(2, 7, 3), (5, 3), (5,)]) == 2 * 14 * 3 * 5
    assert matmul([(2, 1, 4, 3), (6, 3, 5)]) == 2 * 6 * 120  # batch dims broadcast to (2, 6)
    assert matmul([(4, 3), (3,)]) == 2 * 4 * 3  # a matrix-vector product
    assert matmul([(3,), (2, 3, 5)]) == 2 * 2 * 3 * 5  # a row through a batch of matrices
    assert mv([(4, 3), (3,)]) == 2 * 4 * 3
    assert OP_FORMULAS["aten::addmv"]([(4,), (4, 3), (3,)], None) == 2 * 4 * 3
    assert dot([(7,), (7,)]) == 2 * 7
    assert linear([(5, 3), (3,)]) == 2 * 5 * 3  # a 1-D weight: one output feature
    # one 3x3 filter per output position: 2 * 1 sample * 8 out * 4 in * 9 * (6*6 positions)
    conv = [(1, 4, 8, 8), (8, 4, 3, 3), (8,)] + [NOT_A_TENSOR] * 6
    assert convolution_forward(conv, (1, 8, 6, 6)) == 2 * 8 * 4 * 9 * 36
    # 8 query heads over 2 key/value heads: every query head counts
    assert sdpa([(2, 8, 16, 64), (2, 2, 32, 64), (2, 2, 32, 64)]) == 2 * 2 * 8 * 16 * 32 * 128
    assert sdpa_backward([(1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)]) * 2 == 5 * sdpa(
        [(1, 4, 8, 16)] * 3
    )
    assert grouped_mm([(10, 8), (3, 8, 4), (3,)]) == 2 * 10 * 8 * 4  # every token through its expert


@pytest.mark.parametrize(
    ("formula", "inputs", "match"),
    [
        (mm, [(4, 3), (2, 5)], "inner dimensions differ"),
        (mv, [(4, 3), (2,)], "inner dimensions differ"),
        (dot, [(3,), (4,)], "inner dimensions differ"),
        (mv, [(4, 3), (3, 1)], "input 1 must be a 1-D tensor"),
        (mm, [(4, 3)], "input 1 must be a 2-D tensor, got nothing"),
        (bmm, [(2, 4, 3), (3, 3, 5)], "batch dimensions differ"),
        (addmm, [(5,), (4, 3, 1), (3, 5)], "input 1 must be a 2-D tensor"),
        (matmul, [(2, 4, 3), (3, 3, 5)], "do not broadcast"),
        (sdpa, [(1, 6, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)], "not a multiple of 4 key/value heads"),
        (sdpa, [(1, 4, 8, 16), (1, 4, 8, 8), (1, 4, 8, 16)], "do not fit together"),
        (sdpa_backward, [(1, 4, 9, 16), (1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)], "does not fit query"),
        (convolution_forward, [(1, 4, 8, 8), (8, 4, 3, 3)], "no later op used the output"),
        (grouped_mm, [(10, 8), (3, 7, 4)], "inner dimensions differ"),
    ],
)
def test_shapes_that_do_not_fit_raise(formula, inputs, match):
    with pytest.raises(OpShapeError, match=match):
        formula(inputs, None)


# --------------------------------------------------------------------------------------------
# Against torch's registry


@EXAMPLES
@given(m=dim, k=dim, n=dim, b=small)
def test_matrix_products_match_torch(m, k, n, b):
    assert mm([(m, k), (k, n)]) == flop_registry[aten.mm]((m, k), (k, n))
    assert addmm([(n,), (m, k), (k, n)]) == flop_registry[aten.addmm]((n,), (m, k), (k, n))
    assert mm([(m, k), (k, n), (), ()]) == flop_registry[aten._scaled_mm]((m, k), (k, n), (), ())
    assert bmm([(b, m, k), (b, k, n)]) == flop_registry[aten.bmm]((b, m, k), (b, k, n))
    assert OP_FORMULAS["aten::baddbmm"]([(b, m, n), (b, m, k), (b, k, n)], None) == flop_registry[aten.baddbmm](
        (b, m, n), (b, m, k), (b, k, n)
    )
    assert mv([(m, k), (k,)]) == counted_by_torch(torch.mv, meta(m, k), meta(k)) == mm_flop((m, k), (k, 1))
    assert dot([(k,), (k,)]) == counted_by_torch(torch.dot, meta(k), meta(k)) == mm_flop((1, k), (k, 1))


@EXAMPLES
@given(
    a=st.lists(small, min_size=1, max_size=4),
    b=st.lists(small, min_size=1, max_size=4),
    m=dim,
    k=dim,
    n=dim,
    left_vector=st.booleans(),
    right_vector=st.booleans(),
)
def test_matmul_and_linear_match_torch(a, b, m, k, n, left_vector, right_vector):
    left = (k,) if left_vector else (*a[:-1], m, k)
    right = (k,) if right_vector else (*b[:-1], k, n)
    batch_a, batch_b = left[:-2], right[:-2]
    broadcastable = all(x == y or 1 in (x, y) for x, y in zip(reversed(batch_a), reversed(batch_b)))
    if broadcastable:
        assert matmul([left, right]) == counted_by_torch(torch.matmul, meta(*left), meta(*right))
    else:
        with pytest.raises(OpShapeError):
            matmul([left, right])
    weight = (n, k)
    assert linear([left, weight, (n,)]) == counted_by_torch(torch.nn.functional.linear, meta(*left), meta(*weight))


convolutions = st.fixed_dictionaries(
    {
        "spatial": st.integers(1, 3),
        "batch": small,
        "groups": st.integers(1, 3),
        "c_in": st.integers(1, 4),
        "c_out": st.integers(1, 4),
        "kernel": st.integers(1, 3),
        "size": st.integers(3, 9),
        "stride": st.integers(1, 3),
        "padding": st.integers(0, 2),
        "dilation": st.integers(1, 2),
    }
)


def conv_case(c: dict, transposed: bool):
    """Input, weight and output shapes of a convolution torch accepts, and its arguments."""
    d = c["spatial"]
    c_in, c_out = c["c_in"] * c["groups"], c["c_out"] * c["groups"]
    x = (c["batch"], c_in, *[c["size"]] * d)
    w = (
        (c_in, c_out // c["groups"], *[c["kernel"]] * d)
        if transposed
        else (c_out, c_in // c["groups"], *[c["kernel"]] * d)
    )
    args = {"stride": c["stride"], "padding": c["padding"], "dilation": c["dilation"], "groups": c["groups"]}
    fn = getattr(torch.nn.functional, f"conv_transpose{d}d" if transposed else f"conv{d}d")
    try:
        out = tuple(fn(meta(*x), meta(*w), **args).shape)
    except RuntimeError:  # an output of size < 1, or padding the kernel cannot cover
        return None
    return x, w, out, [c["stride"]] * d, [c["padding"]] * d, [c["dilation"]] * d


@EXAMPLES
@given(c=convolutions, transposed=st.booleans())
def test_convolution_matches_torch(c, transposed):
    case = conv_case(c, transposed)
    if case is None:
        return
    x, w, out, stride, padding, dilation = case
    expected = flop_registry[aten.convolution](x, w, None, stride, padding, dilation, transposed, out_val=out)
    recorded = [x, w, (w[0],), NOT_A_TENSOR, NOT_A_TENSOR, NOT_A_TENSOR, NOT_A_TENSOR, NOT_A_TENSOR, NOT_A_TENSOR]
    backend = convolution_transpose if transposed else convolution_forward
    assert backend(recorded, out) == expected
    # the generic op reads "transposed" from the channels; when they cannot tell, it is read as plain
    if not transposed or out[1] != w[0]:
        assert convolution(recorded, out) == expected


@EXAMPLES
@given(c=convolutions, transposed=st.booleans())
def test_convolution_backward_matches_torch(c, transposed):
    case = conv_case(c, transposed)
    if case is None:
        return
    x, w, out, stride, padding, dilation = case
    expected = flop_registry[aten.convolution_backward](
        out,
        x,
        w,
        None,
        stride,
        padding,
        dilation,
        transposed,
        [0],
        c["groups"],
        [True, True, False],
        out_val=[x, w, None],
    )
    recorded = [out, x, w] + [NOT_A_TENSOR] * 8
    if not transposed or out[1] != w[0]:  # as for the forward: read as plain when the channels cannot tell
        assert convolution_backward(recorded) == expected


attention = st.fixed_dictionaries(
    {
        "batch": small,
        "kv_heads": st.integers(1, 4),
        "group": st.integers(1, 4),
        "q_len": dim,
        "kv_len": dim,
        "head_dim": st.integers(1, 128),
        "v_head_dim": st.integers(1, 128),
    }
)


@EXAMPLES
@given(a=attention)
def test_attention_matches_torch_with_grouped_query_heads(a):
    q = (a["batch"], a["kv_heads"] * a["group"], a["q_len"], a["head_dim"])
    k = (a["batch"], a["kv_heads"], a["kv_len"], a["head_dim"])
    v = (a["batch"], a["kv_heads"], a["kv_len"], a["v_head_dim"])
    grad = (*q[:3], a["v_head_dim"])
    for op in ("flash", "efficient", "cudnn"):
        forward = getattr(aten, f"_scaled_dot_product_{op}_attention")
        backward = getattr(aten, f"_scaled_dot_product_{op}_attention_backward")
        assert OP_FORMULAS[forward._qualified_op_name]([q, k, v], None) == flop_registry[forward](q, k, v)
        assert OP_FORMULAS[backward._qualified_op_name]([grad, q, k, v], None) == flop_registry[backward](grad, q, k, v)
    if a["v_head_dim"] == a["head_dim"]:
        assert sdpa_backward([grad, q, k, v]) * 2 == sdpa([q, k, v]) * 5


@EXAMPLES
@given(
    groups=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    k=dim,
    n=dim,
    m=dim,
    case=st.sampled_from(["2d3d", "3d2d", "2d2d", "3d3d"]),
)
def test_grouped_mm_is_one_torch_mm_per_group(groups, k, n, m, case):
    g, total = len(groups), sum(groups)
    offs = (g,)
    if case == "2d3d":  # tokens split among experts
        inputs, per_group = [(total, k), (g, k, n), offs], [((rows, k), (k, n)) for rows in groups]
    elif case == "3d2d":  # columns of b split among a's matrices
        inputs, per_group = [(g, m, k), (k, total), offs], [((m, k), (k, cols)) for cols in groups]
    elif case == "2d2d":  # the inner dimension split: one (m, n) output per group
        inputs, per_group = [(m, total), (total, n), offs], [((m, inner), (inner, n)) for inner in groups]
    else:
        inputs, per_group = [(g, m, k), (g, k, n)], [((m, k), (k, n))] * g
    assert grouped_mm(inputs) == sum(flop_registry[aten.mm](a, b) for a, b in per_group)
