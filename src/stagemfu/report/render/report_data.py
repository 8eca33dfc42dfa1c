"""Plain data for ``stagemfu report``: the ``stagemfu.report/1`` JSON document and the CSV tables.

``stagemfu.report/1`` is a public contract (ARCHITECTURE.md): ``peak`` and ``stages`` with
``flops``, ``wall_ns``, ``span_ns``, ``busy_ns``, ``kernel_ns``, ``mfu_wall``, ``mfu_span``,
``mfu_busy``, ``mfu_kernel``, ``mbu`` per stage, and ``model``. Fields may be added, never
renamed. Times are integer nanoseconds, FLOPs and bytes integers, shares and MFU fractions.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import polars as pl

from stagemfu import schemas
from stagemfu.report import MfuReport

# Tables a user can pick for CSV output.
TABLES = ("stages", "decode_steps", "timeline", "kernels", "categories", "uncounted_ops")


def table(rep: MfuReport, name: str) -> pl.DataFrame:
    """One of the report's tables by name."""
    return getattr(rep, name)


def report_document(rep: MfuReport) -> dict[str, Any]:
    """The ``stagemfu.report/1`` JSON document."""
    trace = rep.times.trace
    sf = rep.flops
    return {
        "schema": schemas.REPORT,
        "trace": trace.metadata(),
        "within": rep.times.within,
        "gpus": trace.gpus.to_dicts(),
        "run": {k: v for k, v in rep.run.items() if not k.startswith("_")},
        "flops_source": {
            "kind": sf.kind,
            "source": sf.source,
            "model": sf.model,
            "dtype": sf.dtype,
            "inputs": sf.inputs,
        },
        "peak": asdict(rep.peak) | {"notes": list(rep.peak.notes)},
        "stages": rep.stages.to_dicts(),
        "model": rep.model,
        "latency": rep.latency,
        **{name: table(rep, name).to_dicts() for name in TABLES if name != "stages"},
        "warnings": list(rep.warnings),
        "notes": list(rep.notes),
    }


def report_tables(rep: MfuReport) -> dict[str, pl.DataFrame]:
    """Every table of an :class:`MfuReport` by name, for the SQLite output: :data:`TABLES`, the
    FLOPs per stage as given (``flops``), one-row ``model``, ``latency`` (when the report has them)
    and ``peak``, ``gpus``."""
    one_row = {
        "model": rep.model,
        "latency": rep.latency,
        "peak": asdict(rep.peak) | {"notes": list(rep.peak.notes)},
    }
    return {
        **{name: table(rep, name) for name in TABLES},
        "flops": rep.flops.stages,
        **{name: pl.DataFrame([row]) for name, row in one_row.items() if row},  # no model level: no table
        "gpus": rep.times.trace.gpus,
    }


def report_meta(rep: MfuReport) -> dict[str, Any]:
    """The document's metadata (everything but its tables), for the SQLite output's ``stagemfu`` table."""
    doc = report_document(rep)
    return {k: v for k, v in doc.items() if k not in (*TABLES, "model", "latency", "peak", "gpus")}
