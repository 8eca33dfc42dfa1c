"""Join per-stage times with per-stage FLOPs: achieved TFLOP/s, MFU on four time bases, MBU, diagnosis.

Pure polars: frames in, frames out. Times come from :class:`~stagemfu.postprocess.StageTimes`
(summed over the instances kept by ``--within``), FLOPs from :class:`StageFlops` (one
generation). A stage is an NVTX range name (``domain:name`` picks one domain); ``decode_first`` and
``decode_last`` are the first and last step of each generation's ``decode`` ranges.

MFU on base *b* is ``flops / (b_ns × peak)``: on kernel time it rates the kernels themselves, on
wall time everything the stage cost (launch gaps, host work, synchronisation). MBU is ``bytes /
(kernel_ns × peak bandwidth)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from stagemfu.postprocess.stages import StageTimes
from stagemfu.report.flops_file import DERIVED_STAGES, StageFlops
from stagemfu.report.peaks import Peak

BASES = ("wall", "span", "busy", "kernel")
TIME_COLUMNS = ["instances", "wall_ns", "span_ns", "busy_ns", "kernel_ns", "gpu_ops"]
# The built-in models' stages in the order reports list them (ARCHITECTURE.md); others follow.
STAGE_ORDER = ("vision", "sam", "clip", "encoder", "projector", "prefill", "decode", "decode_first", "decode_last")
LAUNCH_BOUND_BUSY = 0.5  # GPU busy for less than half the stage's wall time
MEMORY_BOUND_MBU = 0.5
COMPUTE_BOUND_MFU = 0.5


@dataclass(frozen=True)
class Joined:
    """The join's result: per-stage rows, per-decode-step rows and what the user should know.

    ``stages`` columns: ``stage``, ``flops``, ``bytes``, ``generations``, ``instances``,
    ``wall_ns``, ``span_ns``, ``busy_ns``, ``kernel_ns``, ``gpu_ops``, ``tflops_<base>`` and
    ``mfu_<base>`` for wall, span, busy and kernel, ``idle_share`` (1 − busy/span),
    ``busy_share`` (busy/wall), ``mbu``, ``mbu_wall``, ``flops_analytic``, ``flops_torch``,
    ``flops_fvcore``, ``diagnosis``.
    ``decode_steps``: ``generation``, ``step``, ``wall_ns``, ``span_ns``, ``busy_ns``,
    ``kernel_ns``, ``flops``, ``bytes``, ``tflops_kernel``, ``mfu_<base>``, ``mbu``.
    """

    stages: pl.DataFrame
    decode_steps: pl.DataFrame
    vision_in_prefill: bool
    notes: tuple[str, ...]


def join(st: StageTimes, sf: StageFlops, peak: Peak) -> Joined:
    """MFU and MBU per stage of ``sf`` found in ``st``; a note for each stage found on one side only."""
    notes: list[str] = []
    steps = _decode_steps_per_generation(st, sf)
    ranges = _range_times(st)
    times = pl.concat([ranges, _decode_step_times(st, steps)], how="vertical")
    flops = sf.stages.rename({"instances": "instances_per_generation"})
    vision_in_prefill = _nested(st, "vision", "prefill")
    if sf.prefill_excludes_vision and vision_in_prefill and {"prefill", "vision"} <= set(flops["stage"]):
        flops = _add_vision_to_prefill(flops)
        notes.append(
            "prefill's FLOPs include vision's: the vision range runs inside the prefill range, so prefill's times "
            "cover both (the analyzer's prefill counts the language model alone)"
        )
    missing = flops.join(times, on="stage", how="anti")["stage"].to_list()
    notes += [f"stage {s!r} has FLOPs but the trace has no NVTX range {s!r}: left out" for s in missing]
    untimed = [s for s in STAGE_ORDER if s in set(ranges["stage"]) and s not in set(flops["stage"])]
    notes += [f"range {s!r} is in the trace but has no FLOPs: left out" for s in untimed]
    rows = flops.join(times, on="stage", how="inner").with_columns(
        generations=_generations(), _order=_stage_order(flops["stage"].to_list())
    )
    notes += _instance_notes(rows)
    rows = rows.with_columns(
        pl.when(pl.col("generations").is_not_null())
        .then(pl.col(c) * pl.col("generations"))
        .otherwise(pl.col(c))
        .alias(c)
        for c in ("flops", "bytes", "flops_analytic", "flops_torch", "flops_fvcore")
    )
    stages = (
        with_rates(rows, peak)
        .with_columns(diagnosis=_diagnosis())
        .sort("_order")
        .select(
            "stage",
            "flops",
            "bytes",
            "generations",
            *TIME_COLUMNS,
            *[f"tflops_{b}" for b in BASES],
            *[f"mfu_{b}" for b in BASES],
            "idle_share",
            "busy_share",
            "mbu",
            "mbu_wall",
            "flops_analytic",
            "flops_torch",
            "flops_fvcore",
            "diagnosis",
        )
    )
    return Joined(stages, _decode_step_rows(st, sf, steps, peak), vision_in_prefill, tuple(notes))


def with_rates(frame: pl.DataFrame, peak: Peak) -> pl.DataFrame:
    """Add ``tflops_<base>``, ``mfu_<base>``, ``idle_share``, ``busy_share``, ``mbu``, ``mbu_wall``.

    FLOPs per nanosecond are GFLOP/s, so TFLOP/s is ``flops / ns / 1000``; a zero time gives null.
    """

    def per(num: str, den: str, scale: float) -> pl.Expr:
        return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den) / scale)

    bandwidth = peak.bandwidth_gbs
    return frame.with_columns(
        *[per("flops", f"{b}_ns", 1e3).alias(f"tflops_{b}") for b in BASES],
        *[per("flops", f"{b}_ns", peak.tflops * 1e3).alias(f"mfu_{b}") for b in BASES],
        idle_share=pl.when(pl.col("span_ns") > 0).then(1 - pl.col("busy_ns") / pl.col("span_ns")),
        busy_share=per("busy_ns", "wall_ns", 1.0),
        mbu=per("bytes", "kernel_ns", bandwidth) if bandwidth else pl.lit(None, pl.Float64),
        mbu_wall=per("bytes", "wall_ns", bandwidth) if bandwidth else pl.lit(None, pl.Float64),
    )


def _range_times(st: StageTimes) -> pl.DataFrame:
    """Times per stage key: every range under its name and, in a named domain, also ``domain:name``."""
    r = st.ranges
    keyed = pl.concat(
        [
            r.with_columns(stage=pl.col("name")),
            r.filter(pl.col("domain") != "").with_columns(stage=pl.col("domain") + ":" + pl.col("name")),
        ]
    )
    return keyed.group_by("stage", maintain_order=True).agg(pl.col(TIME_COLUMNS).sum())


def _decode_instances(st: StageTimes, steps: int | None) -> pl.DataFrame:
    """The decode range instances in time order, numbered by generation and step (1-based)."""
    d = st.instances.filter(pl.col("name") == "decode").sort("start_ns")
    per = steps or max(d.height, 1)
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    return d.with_columns(generation=index // per + 1, step=index % per + 1)


def _decode_step_times(st: StageTimes, steps: int | None) -> pl.DataFrame:
    """``decode_first``/``decode_last``: the first and last step of every generation, summed."""
    d = _decode_instances(st, steps)
    last = d["step"].max() if d.height else 0
    frames = [
        d.filter(pl.col("step") == step)
        .select(pl.lit(name).alias("stage"), pl.len().cast(pl.Int64).alias("instances"), pl.col(TIME_COLUMNS[1:]).sum())
        .select("stage", *TIME_COLUMNS)
        for name, step in zip(DERIVED_STAGES, (1, last))
        if d.height
    ]
    return pl.concat(frames) if frames else _range_times(st).clear()


def _decode_steps_per_generation(st: StageTimes, sf: StageFlops) -> int | None:
    """Decode steps per generation from the FLOPs (``instances`` of ``decode``), when they divide the trace's."""
    known = sf.stages.filter((pl.col("stage") == "decode") & pl.col("instances").is_not_null())["instances"]
    count = st.instances.filter(pl.col("name") == "decode").height
    if known.is_empty() or not count or count % known[0]:
        return None
    return int(known[0])


def _decode_step_rows(st: StageTimes, sf: StageFlops, steps: int | None, peak: Peak) -> pl.DataFrame:
    """One row per decode step; FLOPs and bytes per step interpolated between the first and last step.

    Step *t* attends over ``prompt + t`` positions, so its FLOPs grow linearly with *t*: a straight
    line through ``decode_first`` and ``decode_last`` gives every step. Without them, each step
    gets the mean (``decode / steps``).
    """
    d = _decode_instances(st, steps).select("generation", "step", "wall_ns", "span_ns", "busy_ns", "kernel_ns")
    f = {r["stage"]: r for r in sf.stages.iter_rows(named=True)}
    n = int(d["step"].max()) if d.height else 0

    def per_step(column: str) -> pl.Expr:
        first, last = (f.get(s, {}).get(column) for s in DERIVED_STAGES)
        total = f.get("decode", {}).get(column)
        if first is not None and last is not None and n > 1:
            line = pl.lit(first) + (pl.lit(last - first) * (pl.col("step") - 1)) / (n - 1)
            return line.round(0).cast(pl.Int64)
        return pl.lit(None, pl.Int64) if total is None else pl.lit(round(total / n), pl.Int64)

    rows = (
        d.with_columns(flops=per_step("flops"), bytes=per_step("bytes"))
        if n
        else d.with_columns(flops=pl.lit(None, pl.Int64), bytes=pl.lit(None, pl.Int64))
    )
    return with_rates(rows, peak).select(
        "generation",
        "step",
        "wall_ns",
        "span_ns",
        "busy_ns",
        "kernel_ns",
        "flops",
        "bytes",
        "tflops_kernel",
        *[f"mfu_{b}" for b in BASES],
        "mbu",
    )


def _nested(st: StageTimes, inner: str, outer: str) -> bool:
    """True when some ``inner`` range instance lies inside an ``outer`` one (its path passes through it)."""
    paths = st.instances.filter(pl.col("name") == inner)["path"]
    return bool(paths.str.contains(f"(^|/){outer}/").any()) if paths.len() else False


def _add_vision_to_prefill(flops: pl.DataFrame) -> pl.DataFrame:
    vision = flops.filter(pl.col("stage") == "vision").row(0, named=True)
    is_prefill = pl.col("stage") == "prefill"
    cols = ("flops", "bytes", "flops_analytic", "flops_torch", "flops_fvcore")
    return flops.with_columns(
        pl.when(is_prefill & pl.lit(vision[c] is not None)).then(pl.col(c) + (vision[c] or 0)).otherwise(pl.col(c))
        for c in cols
    )


def _generations() -> pl.Expr:
    """How many generations the trace's instances hold: instances / instances per generation, when whole."""
    per = pl.col("instances_per_generation")
    return pl.when(per.is_not_null() & (pl.col("instances") % per == 0)).then(pl.col("instances") // per)


def _stage_order(stages: list[str]) -> pl.Expr:
    known = {s: i for i, s in enumerate(STAGE_ORDER)}
    order = {s: known.get(s, len(STAGE_ORDER) + i) for i, s in enumerate(stages)}
    return pl.col("stage").replace_strict(order, return_dtype=pl.Int64)


def _instance_notes(rows: pl.DataFrame) -> list[str]:
    notes = []
    for r in rows.filter(pl.col("instances_per_generation").is_not_null()).iter_rows(named=True):
        if r["generations"] is None:
            notes.append(
                f"stage {r['stage']!r}: the trace has {r['instances']} instances but the FLOPs describe "
                f"{r['instances_per_generation']} per generation; its MFU compares different amounts of work "
                "(check --within and the analyzer's --new-tokens)"
            )
        elif r["generations"] > 1:
            notes.append(
                f"stage {r['stage']!r}: the trace holds {r['generations']} generations; FLOPs counted "
                f"×{r['generations']}"
            )
    return notes


def _diagnosis() -> pl.Expr:
    """One line per stage: what limits it, from busy share, MBU and kernel MFU (first rule that holds)."""

    def pct(column: str) -> pl.Expr:
        return (pl.col(column) * 100).round(0).cast(pl.Int64)

    return (
        pl.when(pl.col("busy_ns").fill_null(0) == 0)
        .then(pl.lit("no GPU work: the stage launched no kernels"))
        .when(pl.col("mfu_kernel") > 1)
        .then(
            pl.format(
                "impossible: kernels at {} % of peak; the FLOPs describe other work than this trace "
                "(model, shapes, --within) or the peak is too low",
                pct("mfu_kernel"),
            )
        )
        .when(pl.col("busy_share") < LAUNCH_BOUND_BUSY)
        .then(
            pl.format(
                "launch-bound: GPU busy {} % of the stage; kernels at {} % of peak",
                pct("busy_share"),
                pct("mfu_kernel"),
            )
        )
        .when(pl.col("mbu").fill_null(0) >= MEMORY_BOUND_MBU)
        .then(pl.format("memory-bound: kernels move data at {} % of peak bandwidth", pct("mbu")))
        .when(pl.col("mfu_kernel") >= COMPUTE_BOUND_MFU)
        .then(pl.format("compute-bound: kernels at {} % of peak", pct("mfu_kernel")))
        .otherwise(
            pl.format(
                "kernel-bound: GPU busy {} % of the stage, kernels at only {} % of peak (small or unfused kernels)",
                pct("busy_share"),
                pct("mfu_kernel"),
            )
        )
    )
