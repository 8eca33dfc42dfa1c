"""stagemfu: how well each stage of a model uses the GPU, from Nsight Systems traces.

In a notebook (see ``docs/api.md``)::

    import stagemfu
    st = stagemfu.load("run.sqlite", within="measured")        # StageTimes: st.ranges, st.paths, ...
    ranks = stagemfu.load_many(["ranks/"])                      # CombinedTimes of several traces
    r = stagemfu.report.report("run.sqlite", flops={"prefill": 1.6e12, "decode": 8.2e9})   # MfuReport
    a = stagemfu.analyze("deepseek-ocr2", mode="base", new_tokens=32)                     # Analysis
    w = stagemfu.what_if("deepseek-ocr2", sweep={"batch": [1, 8, 64]}, gpu="H200")       # WhatIf
    stagemfu.compare(r, "before.json")                          # Comparison

Stage ranges for your own code (see :mod:`stagemfu.collect.api`)::

    with stagemfu.stage("prefill"): ...
    stagemfu.instrument(model, {"sam": "model.vision_tower.sam_encoder"})
    with stagemfu.generation_stages(model): model.generate(...)
    with stagemfu.count_flops(): train_step(batch)    # FLOPs per stage of one call -> flops.json

Everything is loaded on first use (the subpackages ``stagemfu.postprocess``, ``stagemfu.report``,
``stagemfu.analyzer``, ``stagemfu.collect``, ``stagemfu.models`` too), so ``import stagemfu``
stays cheap: no polars, no torch, no nvtx until a function needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # no import at run time: `import stagemfu` must stay cheap
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from stagemfu.analyzer import Analysis
    from stagemfu.report import MfuReport
    from stagemfu.report.compare import Comparison
    from stagemfu.report.what_if import WhatIf

__version__ = "0.1.0"

SUBPACKAGES = ("postprocess", "report", "analyzer", "collect", "models", "data", "errors", "deps", "notebook")
# Public names -> the module that defines them, imported when first asked for.
LAZY = {
    "stage": "stagemfu.collect.api",
    "instrument": "stagemfu.collect.api",
    "generation_stages": "stagemfu.collect.api",
    "count_flops": "stagemfu.collect.flop_count",
    "load": "stagemfu.postprocess",
    "load_many": "stagemfu.postprocess",
    "StageTimes": "stagemfu.postprocess",
    "CombinedTimes": "stagemfu.postprocess",
    "MfuReport": "stagemfu.report",
    "Analysis": "stagemfu.analyzer",
    "Comparison": "stagemfu.report.compare",
    "WhatIf": "stagemfu.report.what_if",
    "StagemfuError": "stagemfu.errors",
    "MissingDependencyError": "stagemfu.errors",
}
__all__ = ["__version__", "analyze", "compare", "what_if", *LAZY, *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f"stagemfu.{name}")
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'stagemfu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def analyze(
    model: str,
    *,
    config: str | Path | None = None,
    counters: tuple[str, ...] | None = None,
    **inputs: Any,
) -> Analysis:
    """FLOPs, bytes and parameters per stage of one ``generate`` call, as ``stagemfu analyze``.

    Parameters
    ----------
    model
        A preset (``deepseek-ocr``, ``deepseek-ocr2``) or a Hugging Face ``config.json`` (or its
        directory) of a decoder LM.
    config
        A JSON overlay on the model's config.
    counters
        Any of ``analytic``, ``torch``, ``fvcore``. By default all three, the last two noted as
        not run when ``stagemfu[model]`` is missing; a counter named here must run.
    inputs
        The input shape, as :class:`stagemfu.models.Inputs` takes it: ``mode``, ``image_size``,
        ``crops``, ``text_tokens``, ``new_tokens``, ``batch``, ``dtype``, ``full_logits``.

    Returns
    -------
    Analysis
        See :func:`stagemfu.analyzer.analyze`.
    """
    from pathlib import Path

    from stagemfu.analyzer import analyze as run_analysis
    from stagemfu.errors import ModelConfigError
    from stagemfu.models import Inputs, load_model_spec

    try:
        shape = Inputs(**inputs)
    except TypeError as err:
        raise ModelConfigError(f"{model}: {err}; the inputs are those of stagemfu.models.Inputs") from err
    spec = load_model_spec(model, config=Path(config) if config is not None else None)
    return run_analysis(spec, shape, counters=None if counters is None else tuple(counters))


def what_if(
    model: str,
    *,
    sweep: Mapping[str, Sequence[Any]] | None = None,
    gpu: str | None = None,
    config: str | Path | None = None,
    counters: tuple[str, ...] = ("analytic",),
    peak_tflops: float | None = None,
    peak_bandwidth_gbs: float | None = None,
    **inputs: Any,
) -> WhatIf:
    """FLOPs, bytes, KV cache and roofline time per stage over a grid of input shapes, as
    ``stagemfu analyze MODEL --sweep NAME=V1,V2,... --gpu NAME``.

    Parameters
    ----------
    model, config, inputs
        As :func:`analyze`; ``inputs`` are the shape every combination starts from (``dtype``
        also picks the peak).
    sweep
        Input -> values: ``batch``, ``text_tokens``, ``new_tokens``, ``crops``, ``mode``; every
        combination is counted. None or empty counts the inputs alone.
    gpu, peak_tflops, peak_bandwidth_gbs
        The GPU whose roofline the stages are read against (a peak-table or CUDA name), or
        overrides; with neither, no roofline times.
    counters
        The counters run at every combination (by default the analytic one: fast).

    Returns
    -------
    WhatIf
        See :func:`stagemfu.report.what_if.what_if`.
    """
    from pathlib import Path

    from stagemfu.analyzer.sweep import parse_sweeps
    from stagemfu.errors import ModelConfigError
    from stagemfu.models import Inputs, load_model_spec
    from stagemfu.report.peaks import gpu_peak
    from stagemfu.report.what_if import what_if as run_what_if

    try:
        shape = Inputs(**inputs)
    except TypeError as err:
        raise ModelConfigError(f"{model}: {err}; the inputs are those of stagemfu.models.Inputs") from err
    axes = parse_sweeps(f"{name}={','.join(str(v) for v in values)}" for name, values in (sweep or {}).items())
    spec = load_model_spec(model, config=Path(config) if config is not None else None)
    peak = gpu_peak(gpu, dtype=shape.dtype, peak_tflops=peak_tflops, peak_bandwidth_gbs=peak_bandwidth_gbs)
    return run_what_if(spec, shape, axes, peak=peak, counters=tuple(counters))


def compare(
    a: MfuReport | str | Path,
    b: MfuReport | str | Path,
    *,
    labels: tuple[str, str] | None = None,
    top: int = 10,
) -> Comparison:
    """Two reports side by side, B against A, as ``stagemfu compare``.

    Parameters
    ----------
    a, b
        Each an :class:`MfuReport` or a ``stagemfu report --format json`` file.
    labels
        What the tables and notes call the two sides; by default the trace or file each comes from.
    top
        Kernels listed whose total time changed most.

    Returns
    -------
    Comparison
        Per-stage time and MFU deltas on each base, and the kernels that moved most.
    """
    import dataclasses
    from pathlib import Path

    from stagemfu.report import MfuReport
    from stagemfu.report.compare import compare_reports, read_report_json, side_from_report

    def side(rep: MfuReport | str | Path, label: str | None) -> Any:
        if isinstance(rep, MfuReport):
            return side_from_report(rep, label or str(rep.times.trace.path))
        found = read_report_json(Path(rep))
        return dataclasses.replace(found, label=label) if label else found

    label_a, label_b = labels or (None, None)
    return compare_reports(side(a, label_a), side(b, label_b), top=top)
