"""The analyzer's result as data: one row per stage (CSV) and the ``stagemfu.analyze/1`` JSON."""

from __future__ import annotations

import json

import polars as pl

from stagemfu.analyzer import Analysis

COUNTS = ("flops", "flops_analytic", "flops_torch", "flops_fvcore", "bytes", "params")


def stage_table(analysis: Analysis) -> pl.DataFrame:
    """One row per stage: ``stage``, the counts (Int64, null where a counter has none), ``notes``."""
    rows = [
        {"stage": stage, **{c: entry[c] for c in COUNTS}, "notes": "; ".join(entry["notes"])}
        for stage, entry in analysis.stages.items()
    ]
    return pl.DataFrame(rows, schema={"stage": pl.Utf8, **dict.fromkeys(COUNTS, pl.Int64), "notes": pl.Utf8})


def analyze_json(analysis: Analysis) -> str:
    """The ``stagemfu.analyze/1`` document, indented, with a final newline."""
    return json.dumps(analysis.document(), indent=2, ensure_ascii=False) + "\n"
