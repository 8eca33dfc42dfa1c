"""Several sources of FLOPs in one report: their figures side by side, and where they disagree, why.

A stage's FLOPs can come from a user's file, from the op ranges of the trace, from torch's
counter run over one call of the step (``stagemfu.count_flops``) and from the analyzer. The
report uses one (:data:`stagemfu.report.flops_file.SOURCE_KINDS` gives the order) and shows
every source's figure as ``flops_<kind>``, each scaled to the instances the row covers as the
join scales its own. A figure more than 2 % away from the one used is noted with the known
causes for that pair of sources, as the analyzer notes its three counters.
"""

from __future__ import annotations

import polars as pl

from stagemfu.report.flops_file import SOURCE_KINDS, StageFlops
from stagemfu.report.join import Joined

TOLERANCE = 0.02
CAUSES = {
    frozenset(("ops", "counted")): (
        "the run-time count is torch's FlopCounterMode over one call of the step, the op count reads the ops the "
        "traced instances ran: they differ when the traced steps did other work than the counted call (other "
        "shapes or step counts), when ops were left uncounted in the trace (see the op FLOPs notes), or where "
        "torch's registry lacks a formula (_grouped_mm; grouped-query attention fails torch 2.11's)"
    ),
    frozenset(("ops", "analyzer")): (
        "the analyzer counts the model's blocks from its config and inputs, the op count reads the ops that ran: "
        "they differ when the run's shapes were not the analyzer's inputs, on work the analyzer counts by its own "
        "conventions (lm_head on the last prompt position, vision crops), or on ops left uncounted in the trace"
    ),
    frozenset(("counted", "analyzer")): (
        "the analyzer counts the model's blocks from its config and inputs, the run-time count what torch "
        "dispatched in one call: they differ when the call's shapes were not the analyzer's inputs or on work the "
        "analyzer counts by its own conventions"
    ),
}
FILE_CAUSE = "the FLOPs file comes from outside stagemfu: check that it counts the same work, per the same instances"


def side_by_side(
    stages: pl.DataFrame, used: StageFlops, others: list[tuple[StageFlops, Joined]]
) -> tuple[pl.DataFrame, list[str]]:
    """Add ``flops_<kind>`` for every kind of :data:`SOURCE_KINDS` to the report's stage rows.

    Parameters
    ----------
    stages
        The join's rows for the source used (``flops`` scaled to the trace's instances).
    used
        That source.
    others
        The other sources, each with its own join over the same times.

    Returns
    -------
    ``(stages, notes)``: the rows with one column per kind (null where a source has no figure),
    and one note per (stage, source) more than :data:`TOLERANCE` away from ``flops``.
    """
    columns = {kind: pl.lit(None, pl.Int64) for kind in SOURCE_KINDS} | {used.kind: pl.col("flops")}
    out = stages.with_columns(**{f"flops_{kind}": value for kind, value in columns.items()})
    notes = []
    for sf, joined in others:
        figures = joined.stages.select("stage", pl.col("flops").alias("_other"))
        out = (
            out.join(figures, on="stage", how="left", maintain_order="left")
            .with_columns(pl.coalesce(f"flops_{sf.kind}", "_other").alias(f"flops_{sf.kind}"))
            .drop("_other")
        )
        differ = out.filter(
            pl.col("flops").is_not_null()
            & pl.col(f"flops_{sf.kind}").is_not_null()
            & ((pl.col(f"flops_{sf.kind}") - pl.col("flops")).abs() > TOLERANCE * pl.col("flops"))
        )
        cause = CAUSES.get(frozenset((used.kind, sf.kind)), FILE_CAUSE)
        for stage, ours, theirs in differ.select("stage", "flops", f"flops_{sf.kind}").iter_rows():
            gap = f"{100 * (theirs - ours) / ours:+.1f} %" if ours else "other than 0"
            notes.append(
                f"stage {stage!r}: {sf.kind} FLOPs {theirs:,} differ from the {used.kind} FLOPs used, {ours:,}, "
                f"by {gap}: {cause}"
            )
    return out, notes
