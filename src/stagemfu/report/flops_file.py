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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from stagemfu import schemas
from stagemfu.errors import FlopsFileError
from stagemfu.models.shapes import ranges_per_generation
from stagemfu.report.documents import (
    ANALYZE_DOCUMENT,
    USER_DOCUMENT,
    USER_DOCUMENT_META,
    USER_STAGES,
    Document,
    check_document,
    read_document,
)

if TYPE_CHECKING:
    from stagemfu.analyzer import Analysis

COUNTERS = ("analytic", "torch", "fvcore")
DERIVED_STAGES = ("decode_first", "decode_last")  # single decode steps, not ranges of their own
SOURCE_KINDS = ("file", "ops", "counted", "analyzer")  # where FLOPs come from, in the order the report prefers them
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
    kind
        Where the figures come from, one of :data:`SOURCE_KINDS`: ``file`` (a user's file),
        ``analyzer``, ``ops`` (op ranges of the trace) or ``counted`` (torch's counter at run time).
    """

    stages: pl.DataFrame
    source: str
    model: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    dtype: str = "bf16"
    prefill_excludes_vision: bool = False
    notes: tuple[str, ...] = ()
    kind: str = "file"

    @property
    def batch(self) -> int:
        """Sequences generated at once (1 unless the analyzer says otherwise)."""
        return int(self.inputs.get("batch") or 1)


def stage_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The :attr:`StageFlops.stages` frame from rows holding any of its columns (the rest null)."""
    empty = {column: [] if column == "notes" else None for column in STAGE_SCHEMA}
    return pl.DataFrame([empty | row for row in rows], schema=STAGE_SCHEMA)


def read_flops_file(path: str | Path) -> StageFlops:
    """Read a FLOPs file (analyzer JSON, or a JSON/YAML mapping stage → FLOPs), checked against its
    schema (:mod:`.documents`).

    Raises
    ------
    FlopsFileError
        The file is missing, not UTF-8, not JSON/YAML, or does not fit its schema; the message
        names the file and the place (``stages.prefill.flops``).
    """
    return flops_from_document(read_document(path, what="FLOPs file", error=FlopsFileError, yaml=True))


def flops_from_document(doc: Document) -> StageFlops:
    """A :class:`StageFlops` from a FLOPs document already in memory: a file's content, or a mapping
    given in Python (``report(trace, flops={...})``); ``doc.path`` names it in messages."""
    content = doc.content
    if isinstance(content, dict) and content.get("schema") == schemas.ANALYZE:
        return _flops_from_analyze_document(content, source=str(doc.path))
    if isinstance(content, dict) and "stages" in content:
        checked = check_document(doc, USER_DOCUMENT, error=FlopsFileError)
    elif isinstance(content, dict):
        bare = {k: v for k, v in content.items() if k not in ("dtype", "model")}
        meta = {k: v for k, v in content.items() if k in ("dtype", "model")}
        checked = {
            "stages": check_document(Document(doc.path, bare), USER_STAGES, error=FlopsFileError),
            **check_document(Document(doc.path, meta), USER_DOCUMENT_META, error=FlopsFileError),
        }
    else:
        raise FlopsFileError(
            f"{doc.path}: a FLOPs file must be a mapping of stage name to FLOPs (or an analyzer JSON), "
            f"not {type(content).__name__}"
        )
    rows = [_user_stage(name, entry) for name, entry in checked["stages"].items()]
    return StageFlops(
        stages=stage_table(rows),
        source=str(doc.path),
        model=checked.get("model"),
        dtype=checked.get("dtype") or "bf16",
    )


def flops_from_analysis(analysis: Analysis) -> StageFlops:
    """A :class:`StageFlops` from the analyzer's result, its typed stage table taken as it is."""
    inputs = dataclasses.asdict(analysis.shapes.inputs)
    inputs["image_size"] = list(analysis.shapes.inputs.image_size) if analysis.shapes.inputs.image_size else None
    spec = analysis.spec
    return _analyzer_flops(
        analysis.stages,
        source=f"analyzer ({spec.name}, {spec.source})",
        model=spec.name,
        inputs=inputs,
        crops=analysis.shapes.crops,
        notes=analysis.notes,
    )


def _flops_from_analyze_document(doc: dict[str, Any], *, source: str) -> StageFlops:
    """A :class:`StageFlops` from a ``stagemfu.analyze/1`` document (``stagemfu analyze --format json``)."""
    doc = check_document(Document(source, doc), ANALYZE_DOCUMENT, error=FlopsFileError)
    inputs = dict(doc.get("inputs") or {})
    columns, grid_rows = (doc.get("shapes") or {}).get("crop_grid") or (0, 0)
    rows = [
        {"stage": name, **{c: entry.get(c) for c in STAGE_SCHEMA if c not in ("stage", "instances", "notes")},
         "notes": entry.get("notes") or []}
        for name, entry in doc["stages"].items()
    ]  # fmt: skip
    model = doc.get("model")
    return _analyzer_flops(
        stage_table(rows),
        source=source,
        model=model.get("name") if isinstance(model, dict) else model,
        inputs=inputs,
        crops=columns * grid_rows or int(inputs.get("crops") or 0),
        notes=tuple(doc.get("notes") or ()),
    )


def _analyzer_flops(
    stages: pl.DataFrame, *, source: str, model: str | None, inputs: dict[str, Any], crops: int, notes: tuple[str, ...]
) -> StageFlops:
    """The analyzer's stages (from its result or its JSON) as FLOPs to join: each stage's range
    instances per generation set, a stage no counter could measure left out (absent, never 0)."""
    per_generation = ranges_per_generation(int(inputs.get("new_tokens") or 0), crops)
    measured = stages.filter(pl.col("flops").is_not_null())
    if measured.is_empty():
        raise FlopsFileError(f"{source}: no stage of the analyzer's result has FLOPs")
    frame = measured.with_columns(
        instances=pl.col("stage").replace_strict(per_generation, default=1, return_dtype=pl.Int64)
    )
    return StageFlops(
        stages=frame.select(list(STAGE_SCHEMA)),
        source=source,
        model=model,
        inputs=inputs,
        dtype=inputs.get("dtype") or "bf16",
        prefill_excludes_vision=True,
        notes=notes,
        kind="analyzer",
    )


def _user_stage(name: str, entry: int | dict[str, Any]) -> dict[str, Any]:
    """A checked user entry (a count, or ``{flops, bytes, instances}``) as a stage row."""
    entry = entry if isinstance(entry, dict) else {"flops": entry}
    return {"stage": name, "flops": entry["flops"], "bytes": entry.get("bytes"), "instances": entry.get("instances")}
