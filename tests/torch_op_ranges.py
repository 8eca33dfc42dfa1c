"""Op ranges of a real torch run on the CPU, written as emit_nvtx would name them.

``emit_nvtx`` needs CUDA; torch's CPU profiler with ``record_shapes=True`` records the same
thing per op: its name, sequence number and input sizes, taken by the same code
(``torch/csrc/profiler/util.cpp``, ``inputSizes``). This turns its events into NVTX ranges named
the ``getNvtxStr`` way (tensor lists flattened), so the op-FLOP pipeline can be checked against
torch's own counter on what torch really executed. The profiler's
``autograd::engine::evaluate_function`` wrappers have no NVTX counterpart and are dropped; on
the CPU the backward runs on the calling thread, so the ops inside ``backward`` are moved to
another thread, where emit_nvtx finds them on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STAGE_TID, AUTOGRAD_TID = 100, 101
DROPPED = ("autograd::engine::evaluate_function", "[memory]", "ProfilerStep")


def nvtx_sizes(shapes: list[Any]) -> str:
    """``inputSizes`` as ``getNvtxStr`` writes it: one shape per argument, tensor lists flattened in place."""
    flat = []
    for shape in shapes:
        flat.extend(shape if shape and isinstance(shape[0], list) else [shape])
    return "[" + ", ".join("[" + ", ".join(str(d) for d in s) + "]" for s in flat) + "]"


def op_ranges_of(run: Callable[[], None], stages: tuple[str, ...], *, backward: str | None = None) -> list[dict]:
    """Run ``run`` under torch's profiler; its ``record_function`` ranges named in ``stages`` become
    stage ranges, every op an emit_nvtx op range (those inside the ``backward`` stage on another thread).

    Returns
    -------
    ``make_trace`` range rows, times in ns.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    rows = []
    for op_id, event in enumerate(prof.events(), start=1):
        if event.name.startswith(DROPPED):
            continue
        start, end = round(event.time_range.start * 1000), round(event.time_range.end * 1000)
        if event.name in stages:
            rows.append({"text": event.name, "start": start, "end": end, "tid": STAGE_TID})
            continue
        seq = f", seq = {event.sequence_nr}" if event.sequence_nr >= 0 else ""
        text = f"{event.name}{seq}, op_id = {op_id}, sizes = {nvtx_sizes(event.input_shapes)}"
        rows.append({"text": text, "start": start, "end": end, "tid": STAGE_TID})
    span = next(((r["start"], r["end"]) for r in rows if r["text"] == backward), None)
    for row in rows:
        if span and row["text"] not in stages and span[0] <= row["start"] and row["end"] <= span[1]:
            row["tid"] = AUTOGRAD_TID
    return rows
