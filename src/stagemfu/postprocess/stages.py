"""Per-stage times: aggregate range instances by (domain, name) and by path, with kernel breakdowns.

Pure polars over the frames of :mod:`stagemfu.postprocess.attribution`; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from stagemfu.errors import StagemfuError
from stagemfu.globs import glob_regex, is_glob
from stagemfu.notebook import Summarized
from stagemfu.postprocess.attribution import Attribution, attribute
from stagemfu.postprocess.categories import COMMUNICATION, category_expr, category_rules
from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS
from stagemfu.postprocess.metrics import DEVICES, STATS, SUMMED, TOTALS
from stagemfu.postprocess.trace import OPS_SCHEMA, Trace
from stagemfu.postprocess.tree import RangeTree, range_tree

KERNEL_COLUMNS = ("domain", "name", "kernel", "kind", "category", "count", "total_ns", "busy_share")
CATEGORY_COLUMNS = ("domain", "name", "category", "count", "total_ns", "busy_share")


@dataclass(frozen=True, repr=False)  # repr and Jupyter summary: stagemfu.notebook
class StageTimes(Summarized):
    """Everything ``stagemfu postprocess`` reports for one trace.

    Attributes
    ----------
    trace
        The trace's metadata frames (path, versions, GPUs) as read.
    instances
        One row per range instance kept (see ``within``): ``range_id``, ``domain``, ``name``,
        ``style``, ``pid``, ``tid``, ``path``, ``depth``, ``start_ns``, ``end_ns``, the summed
        metrics of :data:`stagemfu.postprocess.metrics.METRICS` (``wall_ns``, ``span_ns``,
        ``busy_ns``, ``exclusive_busy_ns``, ``kernel_ns``, ``comm_ns``, ``comm_busy_ns``,
        ``overlap_ns``, ``gpu_ops``, ``kernels``), ``idle_share``. Communication
        kernels are those of category "communication" (NCCL...): ``comm_ns`` sums their
        durations, ``comm_busy_ns`` is the union of their intervals, ``overlap_ns`` the time at
        least one of them and at least one other kernel ran at once on one device (summed over
        devices).
    ranges
        One row per (domain, name), in order of first appearance: ``instances``,
        ``gpu_instances``, the summed metrics, ``idle_share``.
    processes
        The same sums per (pid, domain, name): one row per process that ran the range, for
        traces of several processes (one per rank).
    paths
        The same sums per path (``measured/prefill/vision``).
    instance_stats
        Per (domain, name, metric) for the metrics with statistics (``wall_ns``, ``span_ns``,
        ``busy_ns``): ``count``,
        ``first_ns``, ``mean_ns``, ``p50_ns``, ``p90_ns``, ``p99_ns``, ``min_ns``, ``max_ns``.
        Span and busy use the instances that launched GPU work.
    devices
        Per (domain, name, device): the metrics given per device (``span_ns``, ``busy_ns``,
        ``kernel_ns``, ``comm_ns``, ``comm_busy_ns``, ``overlap_ns`` (overlap on that device),
        ``gpu_ops``).
    kernels
        Per (domain, name, kernel): ``kind``, ``category``, ``count``, ``total_ns``,
        ``busy_share`` (total over the stage's busy time), largest first.
    categories
        Per (domain, name, category): ``count``, ``total_ns``, ``busy_share``.
    unattributed
        One row: GPU work launched outside every range: the metrics given for totals
        (``span_ns``, ``busy_ns``, ``kernel_ns``, ``gpu_ops``, ``kernels``).
    totals
        One row, the same for all GPU work in the trace.
    ops
        Every GPU operation when the trace holds them in memory (``trace.ops.held``: kind, start,
        end, device, stream, correlation id, process, ``name_id`` — names in ``trace.names`` —
        and its launching call and thread) plus ``range_id``, the NVTX event id of the
        innermost range that launched it (null when none did); empty otherwise.
    within
        The ``--within`` range name, if any.
    notes
        What the user should know about these numbers.
    """

    trace: Trace
    instances: pl.DataFrame
    ranges: pl.DataFrame
    processes: pl.DataFrame
    paths: pl.DataFrame
    instance_stats: pl.DataFrame
    devices: pl.DataFrame
    kernels: pl.DataFrame
    categories: pl.DataFrame
    unattributed: pl.DataFrame
    totals: pl.DataFrame
    ops: pl.DataFrame
    within: str | None = None
    notes: tuple[str, ...] = field(default=())


def stage_times(
    trace: Trace,
    *,
    within: str | None = None,
    ranges: tuple[str, ...] = (),
    categories: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    launches: str = "thread",
    instances: pl.Series | None = None,
) -> StageTimes:
    """Per-stage wall, span, busy and kernel time of a trace.

    Parameters
    ----------
    trace
        From a reader (:func:`stagemfu.postprocess.formats.read`).
    within
        Keep only instances nested in a range of this name (``name`` or ``domain:name``), and
        those ranges themselves; by default every instance.
    ranges
        Report only these range names (``name`` or ``domain:name``); by default all.
    categories
        A CSV of extra ``category,pattern`` rules tried before the built-in ones.
    chunk_rows
        Bound on (range, operation) pairs held in memory at once.
    launches
        Which ranges an operation belongs to: "thread" (nsys's rule) or "process" (see
        :func:`stagemfu.postprocess.attribution.attribute`).
    instances
        Keep only these range instances (``range_id``), e.g. the steps recorded with op shapes;
        by default every instance.

    Returns
    -------
    StageTimes
    """
    rules = category_rules(categories)
    tree = range_tree(trace.ranges)
    keep = _selected(tree, within, trace)
    if ranges:
        unknown = [r for r in ranges if not tree.ranges.filter(_matches(r)).height]
        if unknown:
            raise StagemfuError(f"{trace.path}: no NVTX range named {unknown[0]!r}; {_known_names(tree.ranges)}")
        keep = keep.filter(pl.any_horizontal([_matches(r) for r in ranges]))
    if instances is not None:
        keep = keep.filter(pl.col("range_id").is_in(instances.implode()))
    # Stage number per rid (-1: not reported), so kernel names are totalled per stage on the fly.
    stage_of = keep.select("rid", "domain", "name").with_columns(
        stage=pl.struct("domain", "name").rank("dense").cast(pl.Int64) - 1
    )
    stage_of_rid = np.full(tree.ranges.height, -1, dtype=np.int64)
    stage_of_rid[stage_of["rid"].to_numpy()] = stage_of["stage"].to_numpy()
    # A category per distinct kernel name, once: the (stage, kernel) rows join it by id.
    kernel_names = trace.names.select("name_id", pl.col("name").alias("kernel"), category=category_expr(rules))
    comm_ids = kernel_names.filter(pl.col("category") == COMMUNICATION).get_column("name_id")
    att = attribute(
        trace,
        tree,
        stage_of_rid=stage_of_rid,
        comm_name_ids=tuple(comm_ids.to_list()),
        chunk_rows=chunk_rows,
        launches=launches,
    )
    instances = (
        att.instances.join(keep.select("rid"), on="rid", how="semi")
        .with_columns(idle_share=_idle_share())
        .select(
            "range_id",
            "domain",
            "name",
            "style",
            "pid",
            "tid",
            "path",
            "depth",
            "start_ns",
            "end_ns",
            *SUMMED,
            "idle_share",
            "rid",
        )
    )
    stage_busy = (
        instances.select("rid", "busy_ns")
        .join(stage_of.select("rid", "stage"), on="rid")
        .group_by("stage")
        .agg(pl.col("busy_ns").sum().alias("_busy"))
    )
    stage_names = stage_of.select("stage", "domain", "name").unique("stage")
    kernels = _kernels(att.names, kernel_names, stage_busy)
    return StageTimes(
        trace=trace,
        instances=instances.drop("rid"),
        ranges=_aggregate(instances, ["domain", "name"]),
        processes=_aggregate(instances, ["pid", "domain", "name"]).sort("pid", maintain_order=True),
        paths=_aggregate(instances, ["path"]),
        instance_stats=_instance_stats(instances),
        devices=_devices(att, stage_of),
        kernels=_named(kernels, stage_names, KERNEL_COLUMNS),
        categories=_named(_categories(kernels, stage_busy), stage_names, CATEGORY_COLUMNS),
        unattributed=att.unattributed.select(TOTALS),
        totals=att.totals.select(TOTALS),
        ops=_ops(trace.ops.held, att),
        within=within,
        notes=tuple([*trace.notes, *att.notes]),
    )


def _ops(ops: pl.DataFrame | None, att: Attribution) -> pl.DataFrame:
    """The attributed operations with their innermost range's NVTX event id (null outside every range);
    empty when the operations were read in batches and not held."""
    if ops is None:
        return pl.DataFrame(schema={**OPS_SCHEMA, "range_id": pl.Int64})
    if att.kept is None:
        return ops.with_columns(range_id=_range_ids(att, att.innermost))
    return ops.filter(pl.Series(att.kept)).with_columns(range_id=_range_ids(att, att.innermost[att.kept]))


def _range_ids(att: Attribution, inner: np.ndarray) -> pl.Series:
    """The range's NVTX event id for every rid in ``inner``, null for -1."""
    by_rid = att.instances.sort("rid").get_column("range_id").to_numpy()
    ids = pl.Series("range_id", by_rid[np.maximum(inner, 0)] if len(by_rid) else np.zeros(len(inner), np.int64))
    return ids.set(pl.Series(inner < 0), None)


def _matches(query: str) -> pl.Expr:
    """A range matches ``name`` in any domain, or ``domain:name``: exactly, or as a shell pattern
    (``aten::*``) when ``query`` holds one (:mod:`stagemfu.globs`)."""
    qualified = pl.concat_str([pl.col("domain"), pl.lit(":"), pl.col("name")])
    exact = (pl.col("name") == query) | (qualified == query)
    if not is_glob(query):
        return exact
    pattern = glob_regex(query)
    return exact | pl.col("name").str.contains(pattern) | qualified.str.contains(pattern)


def _known_names(instances: pl.DataFrame) -> str:
    names = instances.get_column("name").unique(maintain_order=True).head(8).to_list()
    if not names:
        return "the trace has no closed NVTX ranges"
    shown = ", ".join(repr(n[:40]) for n in names)
    return f"ranges in the trace include {shown}"


def _selected(tree: RangeTree, within: str | None, trace: Trace) -> pl.DataFrame:
    """The instances to report: all of them, or those nested in a range named ``within`` (and those ranges).

    ``within`` may come from the user or from a caller's default (the report keeps the
    ``measured`` range when the run recorded one), so the messages speak of the range, not of
    an option.
    """
    instances = tree.ranges
    if within is None:
        return instances
    anchors = instances.select(_matches(within)).to_series()
    if not anchors.any():
        if trace.ranges.filter(_matches(within) & pl.col("end").is_null()).height:
            raise StagemfuError(
                f"{trace.path}: the range {within!r} was never closed (the capture stopped inside it), so no "
                "instance lies within it; record the run again so that the range ends inside the capture"
            )
        raise StagemfuError(
            f"{trace.path}: no NVTX range named {within!r} to keep the instances within; {_known_names(instances)}"
        )
    return instances.filter(tree.within(anchors.to_numpy()))


def _idle_share() -> pl.Expr:
    return pl.when(pl.col("span_ns") > 0).then(1 - pl.col("busy_ns") / pl.col("span_ns")).otherwise(None)


def _aggregate(instances: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Sum instances per key, in order of first appearance (start time)."""
    return (
        instances.sort("start_ns")
        .group_by(keys, maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("instances"),
            (pl.col("gpu_ops") > 0).sum().cast(pl.Int64).alias("gpu_instances"),
            *[pl.col(c).sum() for c in SUMMED],
        )
        .with_columns(idle_share=_idle_share())
    )


def _instance_stats(instances: pl.DataFrame) -> pl.DataFrame:
    """count/first/mean/p50/p90/p99/min/max per (domain, name) for wall, span and busy."""
    frames = []
    ordered = instances.sort("start_ns")
    for metric in STATS:
        rows = ordered if metric == "wall_ns" else ordered.filter(pl.col("gpu_ops") > 0)
        value = pl.col(metric)
        frames.append(
            rows.group_by("domain", "name", maintain_order=True).agg(
                pl.lit(metric).alias("metric"),
                pl.len().cast(pl.Int64).alias("count"),
                value.first().alias("first_ns"),
                value.mean().round(0).cast(pl.Int64).alias("mean_ns"),
                *[
                    value.quantile(q, interpolation="linear").round(0).cast(pl.Int64).alias(f"p{int(q * 100)}_ns")
                    for q in (0.5, 0.9, 0.99)
                ],
                value.min().alias("min_ns"),
                value.max().alias("max_ns"),
            )
        )
    return pl.concat(frames)


def _devices(att: Attribution, stage_of: pl.DataFrame) -> pl.DataFrame:
    return (
        att.devices.join(stage_of, on="rid", how="inner")
        .group_by("domain", "name", "device", maintain_order=True)
        .agg([pl.col(c).sum() for c in DEVICES])
        .sort("domain", "name", "device")
    )


def _kernels(names: pl.DataFrame, kernel_names: pl.DataFrame, stage_busy: pl.DataFrame) -> pl.DataFrame:
    """Per (stage, kernel): kind, category, count, total and share of the stage's busy time.

    Keyed by the stage's number, not its name: a trace of op ranges has a stage per operator call,
    and every join and sort here stays on integers.
    """
    named = names.join(kernel_names, on="name_id", how="left")
    return _with_busy_share(named, stage_busy).sort(
        ["stage", "total_ns", "kernel", "kind"], descending=[False, True, False, False], maintain_order=True
    )


def _categories(kernels: pl.DataFrame, stage_busy: pl.DataFrame) -> pl.DataFrame:
    totals = kernels.group_by("stage", "category").agg(pl.col("count").sum(), pl.col("total_ns").sum())
    return _with_busy_share(totals, stage_busy).sort(
        ["stage", "total_ns", "category"], descending=[False, True, False], maintain_order=True
    )


def _with_busy_share(frame: pl.DataFrame, stage_busy: pl.DataFrame) -> pl.DataFrame:
    """Add ``busy_share``: each row's ``total_ns`` over its stage's busy time (null when not busy)."""
    return (
        frame.join(stage_busy, on="stage", how="left")
        .with_columns(busy_share=pl.when(pl.col("_busy") > 0).then(pl.col("total_ns") / pl.col("_busy")))
        .drop("_busy")
    )


def _named(frame: pl.DataFrame, stage_names: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """``frame``'s stage numbers as (domain, name), in its order: stages are numbered in (domain,
    name) order, so a frame sorted by stage is sorted by name."""
    return frame.join(stage_names, on="stage", how="left", maintain_order="left").select(columns)
