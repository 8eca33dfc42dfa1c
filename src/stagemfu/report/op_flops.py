"""FLOPs per stage counted from the program itself: every aten op range of an ``emit_nvtx`` trace
through the op-formula registry (:mod:`stagemfu.analyzer.op_formulas`).

Each executed op counts once. An op with a formula counts only when no op with a formula runs
inside it (``linear`` runs ``addmm``: the ``addmm`` counts), and an op counts for the stage
instances :mod:`stagemfu.postprocess.op_ranges` ties it to (its thread's enclosing stages, and
for the autograd thread's backward ops the main thread's stages open when they started).

Formulas run once per distinct (op, input sizes) signature, not once per op: a training step
repeats a handful of shapes thousands of times. An op whose sizes are missing, cut short or do
not fit its formula is left uncounted and noted, never guessed.

Coverage says how complete the count is: the share of a stage's kernel time spent in kernels
launched inside counted ops; the rest is listed by the innermost op that launched it (norms,
elementwise, copies) or as launched outside every op range.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from stagemfu.analyzer.op_formulas import OP_FORMULAS, OUTPUT_OPS, OpFormula, OpShapeError
from stagemfu.postprocess.op_ranges import OpRanges
from stagemfu.postprocess.op_shapes import decode_sizes, input_producers, op_id, sizes_text
from stagemfu.postprocess.stages import StageTimes
from stagemfu.report.flops_file import StageFlops, stage_table

OUTSIDE_OPS = "(outside op ranges)"  # kernels of a stage launched outside every op range
UNCOUNTABLE = " (has a formula; shapes unusable)"  # after an op left uncounted although it has a formula
NOTED_PROBLEMS = 5  # kinds of uncounted ops named in the note
OUTSIDE_SHARE = 0.1  # a stage with more of its kernel time launched outside op ranges is noted
CONVENTIONS = (
    "op FLOPs: from the op ranges of torch.autograd.profiler.emit_nvtx(record_shapes=True) (or the cpu_op events of "
    "torch.profiler with record_shapes=True), torch's counting "
    "conventions (2 FLOPs per multiply-accumulate; only matrix products, convolutions and attention; attention over "
    "the full score matrix, backward 2.5x forward); an op counts once, at the innermost op with a formula",
    "op FLOPs: ops and GPU work of other threads (PyTorch's autograd thread) count for the main thread's stages open "
    "when they started (--launches process); a stage's FLOPs and times are those of its instances that hold op ranges",
)


@dataclass(frozen=True)
class OpFlops:
    """The count: per op, per stage instance, and what it left out.

    Attributes
    ----------
    ops
        One row per op range with a formula that counted (the innermost such op): ``op_row``,
        ``range_id``, ``op``, ``flops`` (null when it could not be counted), ``problem`` (why not,
        else null).
    instances
        One row per stage instance holding op ranges: ``range_id``, ``flops``, ``op_ranges``,
        ``counted_ops``, ``uncounted_ops`` (ops with a formula left uncounted), ``covered_kernel_ns``
        (kernel time launched inside counted ops), ``op_kernel_ns`` (kernel time launched inside
        any op range), ``partial`` (it encloses a stage instance that launched kernels and holds
        no op range, such as a step run without emit_nvtx: its op ranges describe part of it).
    uncounted
        Per (``range_id``, ``op``): ``kernel_ns`` launched inside op ranges with no counted op
        around them, by the innermost op that launched it (followed by :data:`UNCOUNTABLE` for
        an op that has a formula but could not be counted).
    notes
        Conventions, ops left uncounted and why, FLOPs outside every stage.
    """

    ops: pl.DataFrame
    instances: pl.DataFrame
    uncounted: pl.DataFrame
    notes: tuple[str, ...]


def count_op_flops(
    opr: OpRanges,
    *,
    formulas: Mapping[str, OpFormula] = OP_FORMULAS,
    output_ops: Collection[str] = OUTPUT_OPS,
) -> OpFlops:
    """Count the FLOPs of every op range of a trace and sum them per stage instance.

    Parameters
    ----------
    opr
        The trace's op ranges (:func:`stagemfu.postprocess.op_ranges.op_ranges`).
    formulas
        Op name -> formula; by default the registry (``{**OP_FORMULAS, "aten::x": mine}`` swaps one).
    output_ops
        The ops whose formula needs the output's shape.

    Returns
    -------
    OpFlops
    """
    ops = opr.ops
    n = ops.height
    registered = ops.get_column("op").is_in(list(formulas)).to_numpy()
    outer, inner = (opr.nesting[c].to_numpy() for c in ("outer", "inner"))
    both = registered[outer] & registered[inner]
    counted = registered.copy()
    counted[outer[both]] = False  # a registered op with a registered op inside: that one counts instead
    counted_rows = ops.filter(pl.Series(counted))
    per_op = _evaluate(counted_rows, opr, formulas, set(output_ops) & set(formulas))
    # Kernels launched inside an op that was counted (itself or one around it) are covered.
    covered = np.zeros(n, dtype=bool)
    covered[per_op.filter(pl.col("flops").is_not_null())["op_row"].to_numpy()] = True
    covered[inner[covered[outer]]] = True
    op_values = ops.select("op_row", "op", "kernel_ns", covered=pl.Series(covered), counted=pl.Series(counted)).join(
        per_op.select("op_row", "flops"), on="op_row", how="left"
    )
    pairs = opr.stages.join(op_values, on="op_row", how="inner")
    instances = (
        pairs.group_by("range_id")
        .agg(
            pl.col("flops").sum(),
            pl.len().cast(pl.Int64).alias("op_ranges"),
            (pl.col("counted") & pl.col("flops").is_not_null()).sum().cast(pl.Int64).alias("counted_ops"),
            (pl.col("counted") & pl.col("flops").is_null()).sum().cast(pl.Int64).alias("uncounted_ops"),
            pl.col("kernel_ns").filter(pl.col("covered")).sum().alias("covered_kernel_ns"),
            pl.col("kernel_ns").sum().alias("op_kernel_ns"),
        )
        .sort("range_id")
    )
    # A stage instance around another that launched kernels outside every op range (a plain step
    # inside a `measured` range) holds work its op ranges do not describe: its FLOPs would not
    # cover its times.
    unrecorded = opr.unrecorded.join(instances, on="range_id", how="anti")["range_id"]
    partial = opr.stage_nesting.filter(pl.col("inner").is_in(unrecorded.implode()))["outer"]
    instances = instances.with_columns(partial=pl.col("range_id").is_in(partial.implode()))
    uncounted = (
        pairs.filter(~pl.col("covered") & (pl.col("kernel_ns") > 0))
        .with_columns(op=pl.when(pl.col("counted")).then(pl.col("op") + UNCOUNTABLE).otherwise(pl.col("op")))
        .group_by("range_id", "op")
        .agg(pl.col("kernel_ns").sum())
        .sort("range_id", "kernel_ns", "op", descending=[False, True, False])
    )
    notes = [*CONVENTIONS, *_problem_notes(per_op), *_outside_note(per_op, opr.stages)]
    return OpFlops(ops=per_op, instances=instances, uncounted=uncounted, notes=tuple(notes))


def _evaluate(
    rows: pl.DataFrame, opr: OpRanges, formulas: Mapping[str, OpFormula], output_ops: set[str]
) -> pl.DataFrame:
    """FLOPs of each counted op range: each formula runs once per distinct (op, sizes, output)."""
    rows = rows.select("op_row", "range_id", "op", "name").with_columns(sizes=sizes_text())
    outputs = _output_shapes(rows.filter(pl.col("op").is_in(list(output_ops))), opr)
    rows = rows.join(outputs, on="op_row", how="left")
    signatures = rows.select("op", "sizes", "output").unique().with_columns(shapes=decode_sizes(pl.col("sizes")))
    flops, problems = [], []
    for op, text, output, shapes in signatures.iter_rows():  # distinct signatures: a few hundred per trace
        count, problem = _count_one(formulas[op], text, shapes, output)
        flops.append(count)
        problems.append(problem)
    signatures = signatures.select("op", "sizes", "output").with_columns(
        flops=pl.Series(flops, dtype=pl.Int64), problem=pl.Series(problems, dtype=pl.Utf8)
    )
    return rows.join(signatures, on=["op", "sizes", "output"], how="left", nulls_equal=True).select(
        "op_row", "range_id", "op", "flops", "problem"
    )


def _count_one(
    formula: OpFormula, text: str | None, shapes: list | None, output: str | None
) -> tuple[int | None, str | None]:
    """(FLOPs, None), or (None, why not) for one signature; ``output`` is the output's sizes joined by commas."""
    if text is None:
        return None, "no input sizes (record with emit_nvtx or torch.profiler, record_shapes=True)"
    if shapes is None:
        return None, "unreadable input sizes (the range name is cut short or malformed)"
    out = None if output is None else tuple(int(d) for d in output.split(",") if d)
    try:
        return formula([tuple(s) for s in shapes], out), None
    except OpShapeError as err:
        return None, str(err)


def _output_shapes(rows: pl.DataFrame, opr: OpRanges) -> pl.DataFrame:
    """The output shape of each op range in ``rows``, as a later op saw it (``op_row``, ``output``).

    ``input_op_ids`` names the op that returned each tensor argument; when ops nest (``conv2d`` ->
    ``convolution`` -> ``cudnn_convolution``), the outermost one returning the tensor is named,
    so the op ranges around each row whose op is a convolution are looked up too.
    """
    schema = {"op_row": pl.Int64, "output": pl.Utf8}
    if rows.is_empty():
        return pl.DataFrame(schema=schema)
    ops = opr.ops
    around = (
        opr.nesting.filter(pl.col("inner").is_in(rows["op_row"].implode()))
        .join(ops.select(pl.col("op_row").alias("outer"), "op", "name"), on="outer")
        .filter(pl.col("op").str.contains("conv"))
        .select(pl.col("inner").alias("op_row"), "name", depth=pl.col("outer"))
    )
    candidates = pl.concat([rows.select("op_row", "name", depth=pl.col("op_row")), around]).with_columns(
        producer=op_id()
    )
    ids = candidates["producer"].drop_nulls().unique()
    if ids.is_empty():
        return pl.DataFrame(schema=schema)
    marks = [f"({i},0)" for i in ids.to_list()]
    consumers = ops.filter(pl.col("name").str.contains_any(marks)).select(pl.col("op_row").alias("rid"), "name")
    seen = (
        input_producers(consumers)
        .filter((pl.col("output") == 0) & pl.col("producer").is_in(ids.implode()))
        .join(consumers.select("rid", shapes=decode_sizes(sizes_text())), on="rid")
        .select("producer", output=pl.col("shapes").list.get(pl.col("position"), null_on_oob=True))
        .drop_nulls("output")
        .with_columns(pl.col("output").cast(pl.List(pl.Utf8)).list.join(","))
        .unique("producer", keep="first")
    )
    return (  # the op's own output, else that of the nearest convolution around it
        candidates.join(seen, on="producer", how="inner")
        .sort("op_row", "depth", descending=[False, True])
        .unique("op_row", keep="first")
        .select(pl.col("op_row").cast(pl.Int64), "output")
    )


def _problem_notes(per_op: pl.DataFrame) -> list[str]:
    """One note listing the ops with a formula that could not be counted, grouped by op and reason."""
    problems = (
        per_op.filter(pl.col("problem").is_not_null())
        .group_by("op", "problem")
        .agg(pl.len().alias("ops"))
        .sort("ops", "op", descending=[True, False])
    )
    if problems.is_empty():
        return []
    listed = "; ".join(
        f"{ops:,} {op[:60]}: {problem[:160]}" for op, problem, ops in problems.head(NOTED_PROBLEMS).iter_rows()
    )
    more = f"; {problems.height - NOTED_PROBLEMS} more kinds" if problems.height > NOTED_PROBLEMS else ""
    return [f"op FLOPs: {int(problems['ops'].sum()):,} op(s) with a formula were left uncounted: {listed}{more}"]


def _outside_note(per_op: pl.DataFrame, stages: pl.DataFrame) -> list[str]:
    """FLOPs of counted ops that no stage instance holds (run outside every stage range)."""
    outside = per_op.join(stages, on="op_row", how="anti").filter(pl.col("flops").is_not_null())
    if outside.is_empty():
        return []
    return [
        f"op FLOPs: {outside.height:,} counted op(s), {int(outside['flops'].sum()):,} FLOPs, ran outside every stage "
        "range and count for no stage"
    ]


@dataclass(frozen=True)
class StageOpFlops:
    """An :class:`OpFlops` summed per stage over the instances a report keeps.

    Attributes
    ----------
    flops
        FLOPs per stage (the range name), of kind ``ops``: the total over the instances kept
        (``instances`` left null: nothing to scale).
    coverage
        Per stage: ``covered_kernel_ns`` (kernel time launched inside counted ops),
        ``op_kernel_ns`` (inside any op range), ``kernel_ns`` (all of the stage's),
        ``flops_coverage`` (covered over all, null without kernels).
    uncounted
        Per stage, the ``top`` ops whose kernel time was not covered, largest first: ``stage``,
        ``op`` (:data:`OUTSIDE_OPS` for kernels launched outside every op range), ``kernel_ns``,
        ``kernel_share`` (of the stage's kernel time).
    """

    flops: StageFlops
    coverage: pl.DataFrame
    uncounted: pl.DataFrame


def stage_op_flops(opc: OpFlops, st: StageTimes, *, source: str, top: int = 5) -> StageOpFlops:
    """Sum an op count per stage over the instances ``st`` kept (see :class:`StageOpFlops`)."""
    kept = st.instances.select("range_id", pl.col("name").alias("stage"), "kernel_ns")
    per_instance = kept.join(opc.instances, on="range_id", how="inner")
    coverage = (
        per_instance.group_by("stage", maintain_order=True)
        .agg(pl.col("flops").sum(), pl.col("covered_kernel_ns", "op_kernel_ns", "kernel_ns").sum())
        .with_columns(
            flops_coverage=pl.when(pl.col("kernel_ns") > 0).then(pl.col("covered_kernel_ns") / pl.col("kernel_ns"))
        )
    )
    outside = coverage.select(
        "stage", pl.lit(OUTSIDE_OPS).alias("op"), (pl.col("kernel_ns") - pl.col("op_kernel_ns")).alias("kernel_ns")
    )
    by_op = (
        kept.select("range_id", "stage")
        .join(opc.uncounted, on="range_id")
        .group_by("stage", "op")
        .agg(pl.col("kernel_ns").sum())
    )
    uncounted = (
        pl.concat([by_op, outside.filter(pl.col("kernel_ns") > 0)])
        .join(coverage.select("stage", pl.col("kernel_ns").alias("_stage_ns")), on="stage")
        .with_columns(kernel_share=pl.col("kernel_ns") / pl.col("_stage_ns"))
        .sort(["stage", "kernel_ns", "op"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over("stage") < top)
        .select("stage", "op", "kernel_ns", "kernel_share")
    )
    flops = StageFlops(
        stages=stage_table(coverage.select("stage", "flops").to_dicts()),
        source=source,
        notes=(*opc.notes, *_outside_share_notes(coverage)),
        kind="ops",
    )
    return StageOpFlops(flops=flops, coverage=coverage.drop("flops"), uncounted=uncounted)


def _outside_share_notes(coverage: pl.DataFrame) -> list[str]:
    """Name the stages whose kernels ran largely outside op ranges: their FLOPs miss that work."""
    outside = coverage.filter(
        pl.col("kernel_ns") > 0, (pl.col("kernel_ns") - pl.col("op_kernel_ns")) > OUTSIDE_SHARE * pl.col("kernel_ns")
    ).select("stage", share=1 - pl.col("op_kernel_ns") / pl.col("kernel_ns"))
    return [
        f"op FLOPs: stage {stage[:60]!r}: {100 * share:.0f} % of its kernel time was launched outside op ranges "
        "(run without emit_nvtx(record_shapes=True), or by code that is no aten op): its FLOPs leave that work out"
        for stage, share in outside.iter_rows()
    ]


def partial_note(opc: OpFlops, opr: OpRanges) -> list[str]:
    """Name the stages left out because their instances hold steps recorded without op ranges."""
    left_out = opc.instances.filter("partial").join(opr.stage_ranges.select("range_id", "name"), on="range_id")
    if left_out.is_empty():
        return []
    names = ", ".join(repr(n[:60]) for n in left_out["name"].unique(maintain_order=True).to_list())
    return [
        f"op FLOPs: left out {names}: {left_out.height} instance(s) hold both op ranges and stages that launched GPU "
        "work without op ranges (steps run outside emit_nvtx), so their FLOPs would not match their times"
    ]


def instances_note(st: StageTimes, opr: OpRanges) -> list[str]:
    """Say which instances each stage covers when the trace also holds instances without op ranges."""
    used = st.ranges.group_by("name", maintain_order=True).agg(pl.col("instances").sum())
    everywhere = opr.stage_ranges.filter(pl.col("end").is_not_null()).group_by("name").agg(pl.len().alias("all"))
    fewer = used.join(everywhere, on="name").filter(pl.col("instances") < pl.col("all"))
    if fewer.is_empty():
        return []
    listed = ", ".join(f"{name[:60]!r} {n:,} of {total:,}" for name, n, total in fewer.iter_rows())
    return [
        "op FLOPs: each stage's FLOPs and times are those of its instances holding op ranges (the steps recorded "
        f"under emit_nvtx; their host side is slowed by it, so wall-time MFU reads low): {listed} in the trace"
    ]
