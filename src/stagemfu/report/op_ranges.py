"""Ranges that PyTorch's ``emit_nvtx`` opens around every operator, grouped by operator for people.

``torch.autograd.profiler.emit_nvtx`` names each range after the operator and the call:
``aten::mul, seq = 45328, op_id = 990726, sizes = [[2, 3], [2, 3]], input_op_ids = [...]``. A
trace of a training step holds tens of thousands of distinct names, one per call, so tables keyed
by name are as long as the trace. :func:`group_op_ranges` takes the operator name (``aten::mul``)
as the key instead and sums each table over the calls of an operator, the way the per-name tables
already sum over instances; names without that suffix are kept as they are. The full names stay in
the data outputs (JSON, CSV, SQLite); the terminal and Markdown views show the grouped tables
unless asked for every name.
"""

from __future__ import annotations

import dataclasses

import polars as pl

from stagemfu.postprocess.stages import StageTimes, _instance_stats

# ", seq = 12, op_id = 5, sizes = ..." or ", op_id = 5" (record_function ranges): what follows the op.
CALL_SUFFIX = r", (?:seq|op_id|stashed seq) = "
NAME_SUFFIX = f"(?s){CALL_SUFFIX}.*$"
PATH_SUFFIX = f"{CALL_SUFFIX}[^/]*"  # each component of a path: up to the next '/'
SHARES = ("idle_share", "busy_share")


def op_name(name: pl.Expr) -> pl.Expr:
    """The operator name of an ``emit_nvtx`` range name; any other name unchanged."""
    return name.str.replace(NAME_SUFFIX, "")


def has_call_names(st: StageTimes) -> bool:
    """True when some range is named after one call of an operator (there is something to group)."""
    return bool(st.ranges.get_column("name").str.contains(f"(?s){CALL_SUFFIX}").any())


def group_op_ranges(st: StageTimes) -> StageTimes:
    """``st`` with every per-name table summed over the calls of each operator.

    Times, counts and instances add up; ``idle_share`` is recomputed from the sums (1 − busy/span)
    and each kernel's or category's ``busy_share`` from the group's busy time. Instance statistics
    are recomputed from the instances under their operator names. ``instances`` keeps one row per
    range instance, with the operator as its name. Tables come back in order of first appearance,
    as :func:`stagemfu.postprocess.stage_times` makes them.
    """
    if not has_call_names(st):
        return st
    ranges = _regroup(st.ranges, ["domain", "name"])
    instances = st.instances.with_columns(op_name(pl.col("name")), pl.col("path").str.replace_all(PATH_SUFFIX, ""))
    return dataclasses.replace(
        st,
        instances=instances,
        ranges=ranges,
        processes=_regroup(st.processes, ["pid", "domain", "name"]),
        paths=_regroup(st.paths.with_columns(pl.col("path").str.replace_all(PATH_SUFFIX, "")), ["path"]),
        devices=_regroup(st.devices, ["domain", "name", "device"]),
        kernels=_with_busy_share(_regroup(st.kernels, ["domain", "name", "kernel", "kind", "category"]), ranges),
        categories=_with_busy_share(_regroup(st.categories, ["domain", "name", "category"]), ranges),
        instance_stats=_instance_stats(instances),
    )


def _regroup(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Sum every count and time per key (the name column as its operator), shares recomputed."""
    named = frame.with_columns(op_name(pl.col("name"))) if "name" in keys else frame
    sums = [c for c, dtype in frame.schema.items() if c not in keys and c not in SHARES and dtype.is_numeric()]
    out = named.group_by(keys, maintain_order=True).agg(pl.col(sums).sum())
    if "idle_share" in frame.columns:
        idle = pl.when(pl.col("span_ns") > 0).then(1 - pl.col("busy_ns") / pl.col("span_ns"))
        out = out.with_columns(idle_share=idle)
    if "total_ns" in frame.columns:  # kernels, categories: largest first within each range, as before
        out = out.sort("total_ns", descending=True, maintain_order=True)
        out = out.with_row_index("_r").sort(pl.col("_r").min().over(keys[:2]), "_r").drop("_r")
    return out.select(frame.columns) if "busy_share" not in frame.columns else out


def _with_busy_share(frame: pl.DataFrame, ranges: pl.DataFrame) -> pl.DataFrame:
    busy = ranges.select("domain", "name", pl.col("busy_ns").alias("_busy"))
    return (
        frame.join(busy, on=["domain", "name"], how="left", maintain_order="left")
        .with_columns(busy_share=pl.when(pl.col("_busy") > 0).then(pl.col("total_ns") / pl.col("_busy")))
        .drop("_busy")
    )
