"""FLOPs (and bytes) per stage, from the analyzer or from a file the user wrote.

Three shapes are accepted, in JSON or YAML:

- the analyzer's ``stagemfu.analyze/1`` document (``stagemfu analyze MODEL --format json``);
- ``{"stages": {STAGE: ...}, "dtype": "bf16"}``;
- a bare mapping ``{STAGE: ...}``.

where each ``STAGE`` entry is a number of FLOPs or ``{"flops": N, "bytes": N, "instances": N}``.
``instances`` is how many times the stage's NVTX range runs per generation (a per-token range such
as ``decode`` runs once per step); when the trace holds a multiple of it (two generations inside
``--within``), the FLOPs are scaled to match and a note says so.

The analyzer's ``prefill`` is the language model only, while the ``prefill`` range in a trace
contains the ``vision`` range; :attr:`StageFlops.prefill_excludes_vision` tells the join to add
vision's FLOPs to prefill so both sides describe the same work. A user's mapping is taken as the
work of each range, nested ranges included.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from stagemfu.errors import FlopsFileError, MissingDependencyError
from stagemfu.models.shapes import ranges_per_generation

ANALYZE_SCHEMA = "stagemfu.analyze/1"
COUNTERS = ("analytic", "torch", "fvcore")
DERIVED_STAGES = ("decode_first", "decode_last")  # single decode steps, not ranges of their own
STAGE_SCHEMA = {
    "stage": pl.Utf8,
    "flops": pl.Int64,
    "bytes": pl.Int64,
    "instances": pl.Int64,
    **{f"flops_{c}": pl.Int64 for c in COUNTERS},
    "notes": pl.List(pl.Utf8),
}


@dataclass(frozen=True)
class StageFlops:
    """FLOPs per stage for one generation, ready to join with a trace's times.

    Attributes
    ----------
    stages
        One row per stage: ``stage``, ``flops``, ``bytes`` (null when unknown), ``instances``
        (range instances per generation, null when unknown), ``flops_analytic``,
        ``flops_torch``, ``flops_fvcore`` (each counter's figure, null when it has none) and
        ``notes`` (the counters' notes for that stage).
    source
        The file or model the figures come from.
    model
        The model's name when known.
    inputs
        The analyzer's input shape (``batch``, ``new_tokens``, ``dtype``, ...), empty for a
        user's mapping.
    dtype
        Precision the FLOPs were counted for (``bf16`` when not stated).
    prefill_excludes_vision
        True for the analyzer, whose ``prefill`` is the language model only.
    notes
        Conventions and counter disagreements, for the report's notes.
    """

    stages: pl.DataFrame
    source: str
    model: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    dtype: str = "bf16"
    prefill_excludes_vision: bool = False
    notes: tuple[str, ...] = ()

    @property
    def batch(self) -> int:
        """Sequences generated at once (1 unless the analyzer says otherwise)."""
        return int(self.inputs.get("batch") or 1)


def stage_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The :attr:`StageFlops.stages` frame from rows holding any of its columns (the rest null)."""
    empty = {column: [] if column == "notes" else None for column in STAGE_SCHEMA}
    return pl.DataFrame([empty | row for row in rows], schema=STAGE_SCHEMA)


def read_flops_file(path: str | Path) -> StageFlops:
    """Read a FLOPs file (analyzer JSON, or a JSON/YAML mapping stage → FLOPs).

    Raises
    ------
    FlopsFileError
        The file is missing, not JSON/YAML, or a stage's entry is not a non-negative number.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise FlopsFileError(f"{path}: cannot read the FLOPs file ({err.strerror})") from err
    doc = _parse(text, path)
    if isinstance(doc, dict) and doc.get("schema") == ANALYZE_SCHEMA:
        return flops_from_analysis(doc, source=str(path))
    if not isinstance(doc, dict) or not doc:
        raise FlopsFileError(f"{path}: a FLOPs file must be a mapping of stage name to FLOPs (or an analyzer JSON)")
    stages = doc.get("stages", doc)
    if not isinstance(stages, dict) or not stages:
        raise FlopsFileError(f"{path}: 'stages' must be a mapping of stage name to FLOPs")
    dtype = str(doc.get("dtype", "bf16")) if "stages" in doc else "bf16"
    rows = [_user_stage(path, str(name), entry) for name, entry in stages.items() if name not in ("dtype", "model")]
    return StageFlops(
        stages=stage_table(rows),
        source=str(path),
        model=doc.get("model") if "stages" in doc else None,
        dtype=dtype,
    )


def flops_from_analysis(doc: dict[str, Any], *, source: str) -> StageFlops:
    """A :class:`StageFlops` from a ``stagemfu.analyze/1`` document (a file or ``analyze()``'s output)."""
    stages = doc.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise FlopsFileError(f"{source}: the analyzer document has no 'stages'")
    inputs = dict(doc.get("inputs") or {})
    columns, grid_rows = (doc.get("shapes") or {}).get("crop_grid") or (0, 0)
    crops = columns * grid_rows or int(inputs.get("crops") or 0)
    per_generation = ranges_per_generation(int(inputs.get("new_tokens") or 0), crops)
    rows = []
    for name, entry in stages.items():
        if not isinstance(entry, dict) or entry.get("flops") is None:
            continue  # a stage no counter could measure: absent, never 0
        instances = per_generation.get(name, 1)
        rows.append(
            {
                "stage": name,
                "flops": _count(source, name, entry["flops"]),
                "bytes": _count(source, f"{name}.bytes", entry["bytes"]) if entry.get("bytes") is not None else None,
                "instances": instances,
                **{f"flops_{c}": _optional_count(source, name, entry.get(f"flops_{c}")) for c in COUNTERS},
                "notes": [str(n) for n in entry.get("notes") or []],
            }
        )
    model = doc.get("model")
    return StageFlops(
        stages=stage_table(rows),
        source=source,
        model=model.get("name") if isinstance(model, dict) else model,
        inputs=inputs,
        dtype=str(inputs.get("dtype") or "bf16"),
        prefill_excludes_vision=True,
        notes=tuple(str(n) for n in doc.get("notes") or []),
    )


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise MissingDependencyError(f"{path}: reading YAML needs PyYAML; `pip install pyyaml`") from err
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise FlopsFileError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FlopsFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); use .yaml for YAML") from err


def _user_stage(path: Path, name: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        entry = {"flops": entry}
    unknown = set(entry) - {"flops", "bytes", "instances"}
    if unknown or "flops" not in entry:
        raise FlopsFileError(f"{path}: stage {name!r}: expected a number or {{flops, bytes, instances}}")
    instances = entry.get("instances")
    if instances is not None and (_count(path, f"{name}.instances", instances) < 1):
        raise FlopsFileError(f"{path}: stage {name!r}: instances must be at least 1")
    return {
        "stage": name,
        "flops": _count(path, name, entry["flops"]),
        "bytes": _optional_count(path, f"{name}.bytes", entry.get("bytes")),
        "instances": None if instances is None else int(instances),
    }


def _optional_count(source: str | Path, name: str, value: Any) -> int | None:
    return None if value is None else _count(source, name, value)


def _count(source: str | Path, name: str, value: Any) -> int:
    """A non-negative integer count; ``1.5e12`` is accepted as a float or as the string PyYAML makes of it."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.replace("_", ""))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        raise FlopsFileError(f"{source}: stage {name!r}: {value!r} is not a non-negative number")
    return int(round(value))
