"""The analyzer's result as data: one row per stage (CSV) and the ``stagemfu.analyze/1`` JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import polars as pl

from stagemfu import schemas
from stagemfu.analyzer import Analysis


def stage_table(analysis: Analysis) -> pl.DataFrame:
    """One row per stage: ``stage``, the counts (Int64, null where a counter has none), ``notes`` joined by ``; ``."""
    return analysis.stages.with_columns(pl.col("notes").list.join("; "))


def analyze_document(analysis: Analysis) -> dict[str, Any]:
    """The ``stagemfu.analyze/1`` document (plain JSON types): ``model``, ``inputs``, ``shapes``,
    ``counters``, ``notes`` and ``stages``, a mapping of stage name to its counts and notes."""
    shapes = analysis.shapes
    inputs = asdict(shapes.inputs)
    inputs["image_size"] = list(shapes.inputs.image_size) if shapes.inputs.image_size else None
    return {
        "schema": schemas.ANALYZE,
        "model": {
            "name": analysis.spec.name,
            "family": analysis.spec.family.name,
            "source": analysis.spec.source,
            "params": analysis.params,
            "flops": analysis.total_flops,
        },
        "inputs": inputs,
        "shapes": {
            "base_size": shapes.base_size,
            "local_size": shapes.local_size,
            "crop_grid": list(shapes.crop_grid),
            "image_tokens": shapes.image_tokens,
            "prompt_tokens": shapes.prompt_tokens,
        },
        "counters": list(analysis.counters),
        "notes": list(analysis.notes),
        "stages": {row.pop("stage"): row for row in analysis.stages.to_dicts()},
    }


def analyze_json(analysis: Analysis) -> str:
    """The ``stagemfu.analyze/1`` document, indented, with a final newline."""
    return json.dumps(analyze_document(analysis), indent=2, ensure_ascii=False) + "\n"
