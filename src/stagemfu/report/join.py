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

from stagemfu.errors import FlopsMismatchError
from stagemfu.globs import glob_regex, is_glob
from stagemfu.postprocess.stages import StageTimes
from stagemfu.report.flops_file import DERIVED_STAGES, StageFlops
from stagemfu.report.op_ranges import op_name
from stagemfu.report.peaks import Peak
from stagemfu.report.roofline import ROOFLINE_NOTE, with_roofline

BASES = ("wall", "span", "busy", "kernel")
TIME_COLUMNS = ["instances", "wall_ns", "span_ns", "busy_ns", "kernel_ns", "gpu_ops"]
# The built-in models' stages in the order reports list them (ARCHITECTURE.md); others follow.
STAGE_ORDER = ("vision", "sam", "clip", "encoder", "projector", "prefill", "decode", "decode_first", "decode_last")
LAUNCH_BOUND_IDLE = 0.5  # GPU idle for more than half the stage's GPU span (1 - busy/span)
HOST_BOUND_SPAN = 0.5  # the GPU span covers less than half the range's wall time
# GPU work always ends a little after the range that launched it; a span this much longer than the
# range means the range only enqueued its work (NCCL, TensorRT), and its wall time times nothing.
ASYNC_SPAN = 1.25
ROOFLINE_COLUMNS = ("intensity", "roofline_ns", "roofline_bound", "roofline_efficiency")
MEMORY_BOUND_MBU = 0.5
COMPUTE_BOUND_MFU = 0.5


@dataclass(frozen=True)
class Joined:
    """The join's result: per-stage rows, per-decode-step rows and what the user should know.

    ``stages`` columns: ``stage``, ``flops``, ``bytes``, ``generations``, ``instances``,
    ``wall_ns``, ``span_ns``, ``busy_ns``, ``kernel_ns``, ``gpu_ops``, ``tflops_<base>`` and
    ``mfu_<base>`` for wall, span, busy and kernel, ``idle_share`` (1 − busy/span),
    ``busy_share`` (busy/wall: above 1 when GPU work outlives the range), ``asynchronous`` (the
    stage's GPU span exceeds its wall time by more than a quarter: its GPU work ran after the
    range closed),
    ``mbu``, ``mbu_wall``, the roofline's ``intensity`` (FLOP per byte), ``roofline_ns``,
    ``roofline_bound`` (``compute`` or ``memory``) and ``roofline_efficiency`` (roofline time /
    kernel time; :mod:`.roofline`), ``flops_analytic``, ``flops_torch``, ``flops_fvcore``, ``diagnosis``.
    ``decode_steps``: ``generation``, ``step``, ``wall_ns``, ``span_ns``, ``busy_ns``,
    ``kernel_ns``, ``flops``, ``bytes``, ``tflops_kernel``, ``mfu_<base>``, ``mbu``, ``intensity``,
    ``roofline_ns``, ``roofline_bound``, ``roofline_efficiency``.
    """

    stages: pl.DataFrame
    decode_steps: pl.DataFrame
    vision_in_prefill: bool
    notes: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def join(st: StageTimes, sf: StageFlops, peak: Peak) -> Joined:
    """MFU and MBU per stage of ``sf`` found in ``st``.

    A stage with FLOPs but no range is a warning, a range without FLOPs a note.

    Raises
    ------
    FlopsMismatchError
        The trace holds a number of instances of a stage that is no whole multiple of the FLOPs'
        instances per generation (``decode`` ranges of an 8-token generation against FLOPs counted
        for 32 tokens): every MFU of that stage would compare different work.
    """
    notes: list[str] = []
    warnings: list[str] = []
    steps = _decode_steps_per_generation(st, sf)
    keys = sf.stages["stage"].to_list()
    ranges = _range_times(st, keys)
    times = pl.concat([ranges, _decode_step_times(st, steps)], how="vertical")
    flops = sf.stages.rename({"instances": "instances_per_generation"})
    notes += _nested_pattern_notes(st, keys)
    vision_in_prefill = _nested(st, "vision", "prefill")
    if sf.prefill_excludes_vision and vision_in_prefill and {"prefill", "vision"} <= set(flops["stage"]):
        flops = _add_vision_to_prefill(flops)
        notes.append(
            "prefill's FLOPs include vision's: the vision range runs inside the prefill range, so prefill's times "
            "cover both (the analyzer's prefill counts the language model alone)"
        )
    missing = flops.join(times, on="stage", how="anti")["stage"].to_list()
    warnings += [f"stage {s!r} has FLOPs but the trace has no NVTX range {s!r}: left out" for s in missing]
    untimed = [s for s in STAGE_ORDER if s in set(ranges["stage"]) and s not in set(flops["stage"])]
    notes += [f"range {s!r} is in the trace but has no FLOPs: left out" for s in untimed]
    rows = flops.join(times, on="stage", how="inner").with_columns(
        generations=_generations(), _order=_stage_order(flops["stage"].to_list())
    )
    _refuse_mismatch(rows, st, sf)
    notes += _scaling_notes(rows)
    warnings += _generation_warnings(rows)
    rows = rows.with_columns(
        pl.when(pl.col("generations").is_not_null())
        .then(pl.col(c) * pl.col("generations"))
        .otherwise(pl.col(c))
        .alias(c)
        for c in ("flops", "bytes", "flops_analytic", "flops_torch", "flops_fvcore")
    )
    stages = (
        with_rates(rows, peak)
        .pipe(_with_roofline, peak)
        .with_columns(asynchronous=pl.col("span_ns") > ASYNC_SPAN * pl.col("wall_ns"))
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
            "asynchronous",
            "mbu",
            "mbu_wall",
            *ROOFLINE_COLUMNS,
            "flops_analytic",
            "flops_torch",
            "flops_fvcore",
            "diagnosis",
        )
    )
    if stages["roofline_ns"].null_count() < stages.height:
        notes.append(ROOFLINE_NOTE)
        if vision_in_prefill and {"prefill", "vision"} <= set(stages["stage"]):
            notes.append(
                "prefill's roofline is that of its FLOPs and bytes with vision's added (the range holds both), a "
                "little below the sum of vision's and the language model's own rooflines"
            )
    notes += _beyond_roofline_notes(stages)
    return Joined(stages, _decode_step_rows(st, sf, steps, peak), vision_in_prefill, tuple(notes), tuple(warnings))


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


def _range_times(st: StageTimes, stages: list[str]) -> pl.DataFrame:
    """Times per stage key: every range under its name and, in a named domain, also ``domain:name``;
    a PyTorch ``emit_nvtx`` call also under its operator (``aten::linear`` sums every call of it);
    a key of ``stages`` that is a shell pattern (``aten::*``) and no range's name sums the ranges
    it matches."""
    r = st.ranges.with_columns(op=op_name(pl.col("name")))
    named = r.filter(pl.col("domain") != "")
    keyed = pl.concat(
        [
            r.with_columns(stage=pl.col("name")),
            named.with_columns(stage=pl.col("domain") + ":" + pl.col("name")),
            r.filter(pl.col("op") != pl.col("name")).with_columns(stage=pl.col("op")),
            named.filter(pl.col("op") != pl.col("name")).with_columns(stage=pl.col("domain") + ":" + pl.col("op")),
        ]
    )
    exact = keyed.group_by("stage", maintain_order=True).agg(pl.col(TIME_COLUMNS).sum())
    known = set(exact["stage"])
    patterns = [
        r.filter(range_matches(key)).select(pl.lit(key).alias("stage"), pl.col(TIME_COLUMNS).sum())
        for key in stages
        if is_glob(key) and key not in known
    ]
    return pl.concat([exact, *patterns], how="vertical_relaxed")


def range_matches(stage: str) -> pl.Expr:
    """The ranges a stage key stands for: its name, ``domain:name``, the calls of the operator it
    names, or the names its pattern matches."""
    names = [pl.col("name"), op_name(pl.col("name"))]
    candidates = [*names, *(pl.col("domain") + ":" + n for n in names)]
    exact = pl.any_horizontal([c == stage for c in candidates])
    if not is_glob(stage):
        return exact
    pattern = glob_regex(stage)
    return exact | pl.any_horizontal([c.str.contains(pattern) for c in candidates[::2]])


def _nested_pattern_notes(st: StageTimes, stages: list[str]) -> list[str]:
    """A note for each pattern stage whose matched ranges nest in one another (their times add up twice)."""
    notes = []
    for key in (k for k in stages if is_glob(k)):
        inner = st.instances.filter(range_matches(key)).get_column("path").str.split("/").list.slice(0, -1)
        outer = inner.list.eval(pl.element().str.contains(glob_regex(key))).list.any()
        if outer.any():
            notes.append(
                f"stage {key!r} matches ranges nested in one another: the outer ones' times and FLOPs include "
                "the inner ones', so the stage counts them at each level"
            )
    return notes


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
    return pl.concat(frames) if frames else _range_times(st, []).clear()


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
    return (
        with_rates(rows, peak)
        .pipe(_with_roofline, peak)
        .select(
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
            *ROOFLINE_COLUMNS,
        )
    )


def _with_roofline(frame: pl.DataFrame, peak: Peak) -> pl.DataFrame:
    """The roofline columns (:func:`.roofline.with_roofline`) and ``roofline_efficiency`` = roofline
    time / kernel time: 1 when the kernels ran at the roof, null without bytes or kernel time."""
    return (
        with_roofline(frame, peak)
        .rename({"bound": "roofline_bound"})
        .with_columns(
            roofline_efficiency=pl.when(pl.col("kernel_ns") > 0).then(pl.col("roofline_ns") / pl.col("kernel_ns"))
        )
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


def _refuse_mismatch(rows: pl.DataFrame, st: StageTimes, sf: StageFlops) -> None:
    """Stop when a stage's instances are no whole number of generations of the FLOPs' shape."""
    bad = rows.filter(pl.col("instances_per_generation").is_not_null() & pl.col("generations").is_null())
    if bad.is_empty():
        return
    r = bad.row(0, named=True)
    hint = (
        f"--new-tokens {r['instances'] + 1} if the trace holds one generation"
        if r["stage"] == "decode"
        else "the input shape the trace ran (--mode, --crops)"
    )
    raise FlopsMismatchError(
        f"{st.trace.path}: stage {r['stage']!r}: the trace has {r['instances']} instances but the FLOPs "
        f"({sf.source[:80]}) are for {r['instances_per_generation']} per generation, so its MFU would compare "
        f"different work; count the FLOPs for the trace's shape ({hint}), check --within, or give a FLOPs "
        "file without instances"
    )


def _beyond_roofline_notes(stages: pl.DataFrame) -> list[str]:
    """A note for each stage whose kernels took less time than its roofline allows: the estimated
    bytes (or the FLOPs) are more than its kernels moved or did."""
    return [
        f"stage {r['stage']!r} ran faster than its roofline allows (roofline time {r['roofline_efficiency']:.2f}x "
        f"its kernel time, {r['roofline_bound']}-bound): its kernels moved fewer bytes than estimated (caches, "
        "fused kernels) or the FLOPs or shapes are not the trace's"
        for r in stages.filter(pl.col("roofline_efficiency") > 1).iter_rows(named=True)
    ]


def _scaling_notes(rows: pl.DataFrame) -> list[str]:
    return [
        f"stage {r['stage']!r}: the trace holds {r['generations']} generations; FLOPs counted ×{r['generations']}"
        for r in rows.filter(pl.col("generations") > 1).iter_rows(named=True)
    ]


def _generation_warnings(rows: pl.DataFrame) -> list[str]:
    """A warning when the stages imply different numbers of generations (the FLOPs' shape is not the trace's)."""
    counts = rows.filter(pl.col("generations").is_not_null()).select("stage", "generations")
    if counts["generations"].n_unique() <= 1:
        return []
    shown = ", ".join(f"{s} {g}" for s, g in counts.iter_rows())
    return [
        f"the stages hold different numbers of generations ({shown}): the FLOPs' shape does not match the "
        "trace; check --within and the input shape (--new-tokens, --crops)"
    ]


def _diagnosis() -> pl.Expr:
    """One line per stage: what limits it (first rule that holds), on the stage's GPU span.

    The stage's time is its span (first to last GPU operation), never its wall time: the GPU
    work of an asynchronous range (NCCL, TensorRT) runs after the range closes, so busy/wall can
    exceed 100 %. Idle is 1 − busy/span, as in the tables; no share printed exceeds 100 %.
    """

    def pct(column: str | pl.Expr) -> pl.Expr:
        value = pl.col(column) if isinstance(column, str) else column
        return (value * 100).round(0).cast(pl.Int64)

    busy = 1 - pl.col("idle_share").fill_null(0)
    limit = (
        pl.when(pl.col("mfu_kernel") > 1)
        .then(
            pl.format(
                "impossible: the FLOPs need {}× the GPU's peak on kernel time; they describe other work than this "
                "trace (model, shapes, --within) or the peak is too low",
                (pl.col("mfu_kernel") * 10).round(0) / 10,
            )
        )
        .when(pl.col("idle_share") > LAUNCH_BOUND_IDLE)
        .then(
            pl.format(
                "launch-bound: GPU idle {} % of the stage's GPU span; kernels at {} % of peak",
                pct("idle_share"),
                pct("mfu_kernel"),
            )
        )
        .when(pl.col("mbu").fill_null(0) >= MEMORY_BOUND_MBU)
        .then(pl.format("memory-bound: kernels move data at {} % of peak bandwidth", pct("mbu")))
        .when(pl.col("mfu_kernel") >= COMPUTE_BOUND_MFU)
        .then(pl.format("compute-bound: kernels at {} % of peak", pct("mfu_kernel")))
        .otherwise(
            pl.format(
                "kernel-bound: GPU busy {} % of the stage's GPU span, kernels at only {} % of peak "
                "(small or unfused kernels)",
                pct(busy),
                pct("mfu_kernel"),
            )
        )
    )
    timing = (
        pl.when(pl.col("asynchronous"))
        .then(
            pl.format(
                "; asynchronous: its GPU work ran after its CPU range closed (GPU span {} ms, range {} ms), "
                "so read MFU on span, busy or kernel time, not wall",
                (pl.col("span_ns") / 1e6).round(3),
                (pl.col("wall_ns") / 1e6).round(3),
            )
        )
        .when(pl.col("span_ns") < HOST_BOUND_SPAN * pl.col("wall_ns"))
        .then(
            pl.format(
                "; the GPU span covers only {} % of the range's wall time (host work before or after the GPU's)",
                pct(pl.col("span_ns") / pl.col("wall_ns")),
            )
        )
        .otherwise(pl.lit(""))
    )
    return (
        pl.when(pl.col("busy_ns").fill_null(0) == 0)
        .then(pl.lit("no GPU work: the stage launched no kernels"))
        .otherwise(pl.concat_str([limit, timing]))
    )
