"""A small synthetic training step recorded as emit_nvtx(record_shapes=True) would leave it, with
FLOPs worked out by hand, for the op-FLOP tests (``make_trace`` writes it as an nsys export).

Process 100: the main thread (tid 100) runs ``step`` > ``forward``, ``backward``, ``optimizer``;
the autograd thread (tid 101) runs the backward ops while the main thread's ``backward`` range is
open. A second ``step`` has no op ranges (a plain step), and one counted op runs outside every
stage.
"""

from __future__ import annotations

from typing import Any

from conftest import launch

MAIN, AUTOGRAD = 100, 101

# (name, start, end, tid, kernel ns launched inside it or None)
OPS: list[tuple[str, int, int, int, int | None]] = [
    (
        "aten::linear, seq = 1, op_id = 1, sizes = [[8, 16], [32, 16], [32]], input_op_ids = [(0,-1), (0,-1), (0,-1)]",
        10,
        100,
        MAIN,
        None,
    ),
    ("aten::t, op_id = 2, sizes = [[32, 16]], input_op_ids = [(0,-1)]", 12, 20, MAIN, None),
    (
        "aten::addmm, op_id = 3, sizes = [[32], [8, 16], [16, 32], [], []], "
        "input_op_ids = [(0,-1), (0,-1), (2,0), (0,-1), (0,-1)]",
        30,
        90,
        MAIN,
        50,
    ),
    ("aten::relu, seq = 2, op_id = 4, sizes = [[8, 32]], input_op_ids = [(1,0)]", 110, 150, MAIN, 10),
    (
        "aten::_scaled_dot_product_flash_attention, seq = 3, op_id = 5, "
        "sizes = [[1, 8, 4, 16], [1, 2, 4, 16], [1, 2, 4, 16], [], [], [], []], input_op_ids = [(4,0), (4,0), (4,0)]",
        160,
        250,
        MAIN,
        None,
    ),
    ("aten::_flash_attention_forward, op_id = 6, sizes = [[1, 4, 8, 16], [1, 4, 2, 16]]", 170, 240, MAIN, 100),
    ("AddmmBackward0, seq = 1, op_id = 10, sizes = [[8, 32]], input_op_ids = [(0,-1)]", 420, 600, AUTOGRAD, None),
    ("aten::mm, op_id = 11, sizes = [[8, 32], [32, 16]], input_op_ids = [(0,-1), (0,-1)]", 430, 480, AUTOGRAD, 60),
    ("aten::mm, op_id = 12, sizes = [[16, 8], [8, 32]], input_op_ids = [(0,-1), (0,-1)]", 490, 540, AUTOGRAD, 60),
    ("aten::sum, op_id = 13, sizes = [[8, 32], [], [], []]", 550, 590, AUTOGRAD, 5),
    ("aten::mm, op_id = 20, sizes = [[4096, 10", 620, 650, AUTOGRAD, 7),  # cut short
    ("aten::_foreach_add_, op_id = 30, sizes = [[8, 16], [32, 16], [], []]", 910, 990, MAIN, 20),
    ("aten::mm, op_id = 40, sizes = [[2, 2], [2, 2]], input_op_ids = [(0,-1), (0,-1)]", 5000, 5010, MAIN, None),
]
STAGES = [("step", 0, 1000), ("forward", 0, 400), ("backward", 400, 900), ("optimizer", 900, 1000)]
PLAIN_STEP = [("step", 2000, 3000), ("forward", 2000, 2400)]
PLAIN_KERNEL_NS = 30  # launched inside the plain forward

ADDMM = 2 * 8 * 16 * 32
ATTENTION = 2 * 1 * 8 * 4 * 4 * (16 + 16)  # 8 query heads over 2 key/value heads
GRAD_MM = 2 * 8 * 32 * 16 + 2 * 16 * 8 * 32
EXPECTED_FLOPS = {
    "forward": ADDMM + ATTENTION,
    "backward": GRAD_MM,
    "optimizer": 0,
    "step": ADDMM + ATTENTION + GRAD_MM,
}
# kernel time per stage instance with op ranges, and the part launched inside counted ops
EXPECTED_KERNEL_NS = {"forward": 160, "backward": 132, "optimizer": 20, "step": 312}
EXPECTED_COVERED_NS = {"forward": 150, "backward": 120, "optimizer": 0, "step": 270}


def training_step(make_trace: Any, directory: Any, **kwargs: Any) -> Any:
    """Write the training step above as an nsys-like export; ``kwargs`` go to ``make_trace``."""
    ranges = [{"text": name, "start": s, "end": e, "tid": MAIN} for name, s, e in STAGES]
    launches = []
    corr = 1
    for name, start, end, tid, kernel_ns in OPS:
        ranges.append({"text": name, "start": start, "end": end, "tid": tid})
        if kernel_ns is not None:
            launches.append(
                launch(corr, (start + 1, start + 2), (10_000 + corr * 1000, 10_000 + corr * 1000 + kernel_ns), tid=tid)
            )
            corr += 1
    for name, start, end in PLAIN_STEP:
        ranges.append({"text": name, "start": start, "end": end, "tid": MAIN})
    launches.append(launch(corr, (2001, 2002), (50_000, 50_000 + PLAIN_KERNEL_NS)))
    return make_trace(
        directory,
        ranges=ranges,
        calls=[c for c, _ in launches],
        kernels=[k for _, k in launches],
        **kwargs,
    )
