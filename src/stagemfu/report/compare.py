"""Two reports side by side: per stage time and MFU on each base, and the kernels whose time moved most.

Each side is a ``stagemfu.report/1`` JSON file or a trace reported on the spot (with the same
FLOPs options for both). Stages are matched by name; a stage on one side only is a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from stagemfu import schemas
from stagemfu.errors import ReportFileError
from stagemfu.report.documents import REPORT_DOCUMENT, check_document, read_document
from stagemfu.report.join import BASES

KERNEL_KEYS = ["stage", "kernel"]
STAGE_TYPES = {"stage": pl.Utf8, **{f"mfu_{b}": pl.Float64 for b in BASES}}  # the rest Int64


@dataclass(frozen=True)
class ReportSide:
    """What a comparison needs from one report: its stage rows and top kernels, and a label."""

    label: str
    stages: pl.DataFrame
    kernels: pl.DataFrame


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_reports`.

    Attributes
    ----------
    a, b
        The two sides' labels.
    stages
        One row per stage on both sides: for each base, ``<base>_ns_a``, ``<base>_ns_b``,
        ``<base>_change`` (B/A − 1) and ``mfu_<base>_a``, ``mfu_<base>_b``, ``mfu_<base>_delta``
        (B − A, in MFU fractions); plus ``flops_a``, ``flops_b``.
    kernels
        Kernels whose total time changed most: ``stage``, ``kernel``, ``total_ns_a``,
        ``total_ns_b`` (0 when absent on that side), ``delta_ns``, largest change first.
    notes
        Stages found on one side only; FLOPs that differ between the sides.
    """

    a: str
    b: str
    stages: pl.DataFrame
    kernels: pl.DataFrame
    notes: tuple[str, ...]


def side_from_report(rep: Any, label: str) -> ReportSide:
    """A side from an :class:`~stagemfu.report.MfuReport`."""
    return ReportSide(label, rep.stages, rep.kernels.rename({"name": "stage"}).select(*KERNEL_KEYS, "total_ns"))


def read_report_json(path: Path) -> ReportSide:
    """A side from a ``stagemfu report --format json`` file, checked against :data:`.documents.REPORT_DOCUMENT`."""
    doc = read_document(path, what="report", error=ReportFileError)
    if not isinstance(doc.content, dict) or doc.content.get("schema") != schemas.REPORT:
        raise ReportFileError(
            f"{path}: not a {schemas.REPORT} document; write one with `stagemfu report --format json`"
        )
    checked = check_document(doc, REPORT_DOCUMENT, error=ReportFileError)
    stage_columns = ["stage", "flops", *[f"{b}_ns" for b in BASES], *[f"mfu_{b}" for b in BASES]]
    stages = pl.DataFrame(
        [{c: s[c] for c in stage_columns} for s in checked["stages"]],
        schema={c: STAGE_TYPES.get(c, pl.Int64) for c in stage_columns},
    )
    kernels = pl.DataFrame(
        [{"stage": k["name"], "kernel": k["kernel"], "total_ns": k["total_ns"]} for k in checked.get("kernels") or []],
        schema={"stage": pl.Utf8, "kernel": pl.Utf8, "total_ns": pl.Int64},
    )
    return ReportSide(str(path), stages, kernels)


def compare_reports(a: ReportSide, b: ReportSide, *, top: int = 10) -> Comparison:
    """Per-stage deltas (B against A) on every time base, and the ``top`` kernels that changed most."""
    cols = ["stage", "flops", *[f"{base}_ns" for base in BASES], *[f"mfu_{base}" for base in BASES]]
    left, right = a.stages.select(cols), b.stages.select(cols)
    joined = left.join(right, on="stage", how="inner", suffix="_b", maintain_order="left").rename(
        {c: f"{c}_a" for c in cols[1:]}
    )
    stages = joined.with_columns(
        *[
            pl.when(pl.col(f"{base}_ns_a") > 0)
            .then(pl.col(f"{base}_ns_b") / pl.col(f"{base}_ns_a") - 1)
            .alias(f"{base}_change")
            for base in BASES
        ],
        *[(pl.col(f"mfu_{base}_b") - pl.col(f"mfu_{base}_a")).alias(f"mfu_{base}_delta") for base in BASES],
    )
    notes = [f"stage {s!r} is only in {a.label}" for s in left.join(right, on="stage", how="anti")["stage"]]
    notes += [f"stage {s!r} is only in {b.label}" for s in right.join(left, on="stage", how="anti")["stage"]]
    notes += [
        f"stage {r['stage']!r}: FLOPs differ ({r['flops_a']:,} vs {r['flops_b']:,}); MFU deltas include that"
        for r in stages.filter(pl.col("flops_a") != pl.col("flops_b")).iter_rows(named=True)
    ]
    kernels = (
        a.kernels.join(b.kernels, on=KERNEL_KEYS, how="full", coalesce=True, suffix="_b")
        .rename({"total_ns": "total_ns_a"})
        .with_columns(pl.col("total_ns_a", "total_ns_b").fill_null(0))
        .with_columns(delta_ns=pl.col("total_ns_b") - pl.col("total_ns_a"))
        .sort(pl.col("delta_ns").abs(), "stage", "kernel", descending=[True, False, False])
        .head(top)
    )
    if kernels.height:
        notes.append("kernel times come from each report's top kernels per stage: one outside a list counts as 0 there")
    return Comparison(a.label, b.label, stages, kernels, tuple(notes))
