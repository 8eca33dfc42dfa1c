"""FLOPs per stage counted at run time: torch's ``FlopCounterMode`` over one call of the user's step.

For programs that do not record op shapes in their trace::

    with stagemfu.count_flops():       # one untimed step, before or after the measured ones
        train_step(batch)              # forward, backward, optimizer under stagemfu.stage ranges

Every stage range opened inside the block (``stagemfu.stage``, ``instrument``,
``generation_stages``; nested ones too) gets the FLOPs torch counted while it was open, taken as
the difference of the counter's running total at its start and its end, so a stage's count is
inclusive and backward ops, which torch runs on its autograd thread while the main thread waits
in ``backward()``, count for the stage that called it. On leaving the block the counts go to
``flops.json`` (:mod:`stagemfu.analyzer.run_count`) in the collect output directory
(``$STAGEMFU_OUT_DIR``, set by ``stagemfu collect`` and ``stagemfu run``; else the working
directory), where ``stagemfu report`` finds them beside the trace.

Counting runs the step normally (it is not timed: the counter adds host work per op). torch's
registry lacks ``_grouped_mm`` and matrix-vector products (``mv``, ``dot``) and, before 2.12, fails
on grouped-query attention; stagemfu's op formulas stand in for those ops
(:mod:`stagemfu.analyzer.op_formulas`), so the count matches what ``stagemfu report --op-flops``
reads from a trace.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from stagemfu import schemas
from stagemfu.analyzer.op_formulas import addmv, dot, grouped_mm, mv, sdpa, sdpa_backward
from stagemfu.analyzer.run_count import run_count_document
from stagemfu.collect.api import RangeSink, ranges, recording_to
from stagemfu.errors import CollectError, MissingDependencyError
from stagemfu.files import write_output

# torch ops -> stagemfu formula, laid over torch's registry for the count (see the module docstring)
STAND_INS = {
    "_scaled_dot_product_flash_attention": sdpa,
    "_scaled_dot_product_efficient_attention": sdpa,
    "_scaled_dot_product_cudnn_attention": sdpa,
    "_scaled_dot_product_flash_attention_for_cpu": sdpa,
    "_scaled_dot_product_flash_attention_backward": sdpa_backward,
    "_scaled_dot_product_efficient_attention_backward": sdpa_backward,
    "_scaled_dot_product_cudnn_attention_backward": sdpa_backward,
    "_scaled_dot_product_flash_attention_for_cpu_backward": sdpa_backward,
    "_grouped_mm": grouped_mm,
    "mv": mv,
    "addmv": addmv,
    "dot": dot,
    "vdot": dot,
}
NOTE = (
    "counted at run time by torch.utils.flop_counter.FlopCounterMode over one call, with stagemfu's formulas for "
    "fused attention (grouped-query heads), _grouped_mm and matrix-vector products; a stage's count covers "
    "everything run while its range was open, its nested stages included"
)


class _CountingSink:
    """A range sink that notes the counter's total as each stage opens and closes, then passes the range on."""

    attached = True  # stage hooks (instrument, generation_stages) install themselves while counting

    def __init__(self, inner: RangeSink, counter: Any) -> None:
        self._inner = inner
        self._counter = counter
        self._open: list[tuple[str, int, dict[str, int]]] = []
        self.stages: dict[str, dict[str, Any]] = {}

    def push(self, name: str) -> None:
        self._open.append((name, self._counter.get_total_flops(), self._by_op()))
        self._inner.push(name)

    def pop(self) -> None:
        self._inner.pop()
        if not self._open:
            return
        name, total, by_op = self._open.pop()
        entry = self.stages.setdefault(name, {"flops": 0, "calls": 0, "ops": defaultdict(int)})
        entry["flops"] += self._counter.get_total_flops() - total
        entry["calls"] += 1
        for op, flops in self._by_op().items():
            if flops - by_op.get(op, 0):
                entry["ops"][op] += flops - by_op.get(op, 0)

    def _by_op(self) -> dict[str, int]:
        return {str(op): n for op, n in self._counter.get_flop_counts().get("Global", {}).items()}


class count_flops:  # lower case: used like a function, `with stagemfu.count_flops():`
    """Count FLOPs per stage over one call of the user's step, with torch's FlopCounterMode.

    Parameters
    ----------
    out_dir
        Where ``flops.json`` goes; by default ``$STAGEMFU_OUT_DIR`` (the directory ``stagemfu
        collect``/``run`` writes the trace to), else the working directory. None of these and
        ``write=False``: nothing is written.
    dtype
        The precision the step runs in, recorded for the report's peak (``bf16`` by default).
    write
        Write ``flops.json`` on leaving the block (default).

    Attributes
    ----------
    stages
        After the block: stage name -> ``{"flops", "calls", "ops"}``; ``calls`` is how many times
        its range opened, ``ops`` the FLOPs by torch op.
    total
        Every FLOP counted in the block, inside a stage or not.
    path
        The file written, or None.

    Examples
    --------
    >>> with stagemfu.count_flops() as counted:  # doctest: +SKIP
    ...     with stagemfu.stage("step"):
    ...         train_step(batch)
    >>> counted.stages["step"]["flops"]  # doctest: +SKIP
    """

    def __init__(self, out_dir: str | Path | None = None, *, dtype: str = "bf16", write: bool = True) -> None:
        self.out_dir = out_dir
        self.dtype = dtype
        self.write = write
        self.stages: dict[str, dict[str, Any]] = {}
        self.total = 0
        self.path: Path | None = None

    def __enter__(self) -> count_flops:
        try:
            import torch
            from torch.utils.flop_counter import FlopCounterMode
        except ImportError as err:
            raise MissingDependencyError("count_flops needs torch: pip install 'stagemfu[model]'") from err
        aten = torch.ops.aten
        stand_ins = {getattr(aten, op): _torch_formula(fn) for op, fn in STAND_INS.items() if hasattr(aten, op)}
        self._counter = FlopCounterMode(display=False, custom_mapping=stand_ins)
        self._sink = _CountingSink(ranges(), self._counter)
        self._recording = recording_to(self._sink)
        self._recording.__enter__()
        self._counter.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._counter.__exit__(*exc)
        finally:
            self._recording.__exit__(*exc)
        self.total = self._counter.get_total_flops()
        self.stages = {
            name: {"flops": e["flops"], "calls": e["calls"], "ops": dict(sorted(e["ops"].items()))}
            for name, e in self._sink.stages.items()
        }
        if self.write and exc[0] is None:
            self.path = self._write()

    def _write(self) -> Path:
        import torch

        directory = Path(self.out_dir or os.environ.get(schemas.OUT_DIR_ENV) or ".")
        document = run_count_document(
            self.stages, total=self.total, torch_version=torch.__version__, dtype=self.dtype, notes=[NOTE]
        )
        path = directory / schemas.FLOPS_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_output(path, json.dumps(document, indent=2) + "\n")
        except OSError as err:
            raise CollectError(f"{path}: cannot write the FLOP count ({err.strerror})") from err
        return path


def _torch_formula(fn: Any) -> Any:
    """A stagemfu op formula in the shape torch's registry calls it: shapes (torch.Size) for tensor
    arguments, the other arguments as they are, ``out_shape=`` by keyword."""
    import torch

    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fn([tuple(a) if isinstance(a, torch.Size) else () for a in args], None)

    return formula
