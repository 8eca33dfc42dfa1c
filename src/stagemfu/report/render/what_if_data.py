"""A what-if sweep as data: the ``stagemfu.analyze.sweep/1`` JSON and its CSV tables.

``stagemfu.analyze.sweep/1`` is a public contract::

    {"schema": "stagemfu.analyze.sweep/1", "model": {...}, "inputs": {...}, "sweep": {"batch": [1, 8]},
     "gpu": {"name", "model", "dtype", "tflops", "bandwidth_gbs", "ridge_intensity", "source", "reference"},
     "rows": [{"values": {"batch": 8}, "stage": "decode", "flops", "bytes", "kv_read_bytes",
               "kv_write_bytes", "kv_bytes", "intensity", "roofline_ns", "bound", ...}, ...],
     "generation": [{"values": {...}, "ttft_ns", "decode_ns", "tpot_ns", "generation_ns",
                     "decode_tokens_per_s"}, ...],
     "compute_bound": [{"values": {...}, "decode_batch", "decode_intensity_max"}, ...],
     "notes": [...]}

``gpu`` is null when no GPU was named (no roofline times). ``rows`` hold every stage of every
combination; decode is there per step (``decode_first``, ``decode_last``) and for all steps
(``decode``). Counts are integers, times integer nanoseconds, intensity FLOP per byte.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import polars as pl

from stagemfu import schemas
from stagemfu.report.roofline import ridge_intensity
from stagemfu.report.what_if import WhatIf

TABLES = ("stages", "generation", "compute_bound")  # what --format csv --table writes


def table(w: WhatIf, name: str) -> pl.DataFrame:
    """One of the sweep's tables by name (:data:`TABLES`)."""
    return getattr(w, name)


def what_if_document(w: WhatIf) -> dict[str, Any]:
    """The ``stagemfu.analyze.sweep/1`` document (plain JSON types)."""
    spec, base = w.sweep.spec, w.sweep.base
    inputs = asdict(base) | {"image_size": list(base.image_size) if base.image_size else None}
    return {
        "schema": schemas.ANALYZE_SWEEP,
        "model": {"name": spec.name, "family": spec.family.name, "source": spec.source},
        "inputs": inputs,
        "sweep": {axis: list(values) for axis, values in w.sweep.axes.items()},
        "gpu": _gpu(w),
        "rows": _with_values(w.stages.drop("point"), list(w.sweep.axes)),
        "generation": _with_values(w.generation, list(w.sweep.axes)),
        "compute_bound": _with_values(w.compute_bound, [a for a in w.sweep.axes if a != "batch"]),
        "notes": list(w.notes),
    }


def _gpu(w: WhatIf) -> dict[str, Any] | None:
    p = w.peak
    if p is None:
        return None
    return {
        "name": p.gpu,
        "model": p.model,
        "dtype": p.dtype,
        "tflops": p.tflops,
        "bandwidth_gbs": p.bandwidth_gbs,
        "ridge_intensity": ridge_intensity(p),
        "source": p.source,
        "reference": p.reference,
        "notes": list(p.notes),
    }


def _with_values(frame: pl.DataFrame, axes: list[str]) -> list[dict[str, Any]]:
    """Rows with the swept columns gathered under ``values``, the rest as they are."""
    return [{"values": {axis: row.pop(axis) for axis in axes}, **row} for row in frame.to_dicts()]
