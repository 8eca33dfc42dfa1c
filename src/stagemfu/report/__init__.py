"""Report: MFU and MBU per stage, joining a trace's times with FLOPs per stage.

Notebook use::

    from stagemfu import report
    r = report.report("run.sqlite", flops_file="flops.yaml")      # or model="deepseek-ocr2"
    r = report.report("run.sqlite", flops={"prefill": 1.6e12, "decode": {"flops": 8e9, "bytes": 4e10}})
    r.stages        # polars frame: flops, wall/span/busy/kernel ns, tflops_* and mfu_* per stage
    r.model         # prefill + decode on each base
    r.latency       # TTFT, TPOT p50/p90/p99, decode tokens/s on wall and GPU time
    r.peak          # the figure MFU divides by, and where it comes from

Every function here hands off to one module: :mod:`.flops_file` (FLOPs), :mod:`.peaks` (the
denominator), :mod:`.join` (per stage), :mod:`.model_level` (whole generation, latency).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from stagemfu import schemas
from stagemfu.errors import FlopsFileError, FlopsMismatchError, StagemfuError
from stagemfu.notebook import Summarized
from stagemfu.postprocess import StageTimes, Trace, read, stage_times
from stagemfu.report.documents import RUN_COUNT_DOCUMENT, RUN_DOCUMENT, Document, check_document, read_document
from stagemfu.report.flops_file import (
    SOURCE_KINDS,
    StageFlops,
    flops_from_analysis,
    flops_from_document,
    read_flops_file,
    stage_table,
)
from stagemfu.report.join import join, range_matches
from stagemfu.report.model_level import latency, model_totals
from stagemfu.report.peaks import Peak, resolve_peak
from stagemfu.report.sources import side_by_side

if TYPE_CHECKING:
    from stagemfu.analyzer import Analysis

__all__ = ["MfuReport", "Peak", "StageFlops", "build_report", "flops_for_model", "read_flops_file", "report"]

MEASURED = "measured"  # the range `stagemfu run` puts around the timed repetition
UNCOUNTED_SCHEMA = {"stage": pl.Utf8, "op": pl.Utf8, "kernel_ns": pl.Int64, "kernel_share": pl.Float64}


@dataclass(frozen=True, repr=False)  # repr and Jupyter summary: stagemfu.notebook
class MfuReport(Summarized):
    """Everything ``stagemfu report`` shows for one trace.

    Attributes
    ----------
    stages
        One row per stage found in both the trace and the FLOPs (see :class:`.join.Joined`).
    decode_steps
        One row per decode step: times, FLOPs, MFU on each base, MBU.
    model
        Prefill + decode (vision counted once): ``flops``, ``<base>_ns``, ``mfu_<base>``; None
        when either stage is missing.
    latency
        TTFT, TPOT p50/p90/p99 and decode tokens/s on wall and GPU time; None without prefill.
    timeline
        One row per instance of a reported stage: ``stage``, ``path``, ``start_ns`` (from the
        first such instance), ``wall_ns``, ``span_ns``, ``busy_ns``, ``idle_share``.
    kernels, categories
        The postprocessor's top kernels and kernel categories of the reported stages.
    peak, flops, times
        The inputs: the peak used, the FLOPs per stage, the trace's times.
    run
        What ``stagemfu run`` wrote beside the trace (:func:`read_run_file`; empty when absent).
    uncounted_ops
        With FLOPs from op ranges: per stage, the ops whose kernel time no formula covered,
        largest first (``stage``, ``op``, ``kernel_ns``, ``kernel_share``); else empty.
    notes
        What the user should know: scaled FLOPs, peak assumptions, counters' conventions (each once).
    warnings
        What may make numbers wrong and comes first: stages with FLOPs but no range, stages
        that imply different numbers of generations.
    """

    stages: pl.DataFrame
    decode_steps: pl.DataFrame
    model: dict[str, Any] | None
    latency: dict[str, Any] | None
    timeline: pl.DataFrame
    kernels: pl.DataFrame
    categories: pl.DataFrame
    peak: Peak
    flops: StageFlops
    times: StageTimes
    run: dict[str, Any] = field(default_factory=dict)
    uncounted_ops: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=UNCOUNTED_SCHEMA))
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def report(
    trace: str | Path,
    *,
    flops: Mapping[str, Any] | Analysis | None = None,
    flops_file: str | Path | None = None,
    model: str | None = None,
    config: Path | None = None,
    inputs: Any = None,
    counters: tuple[str, ...] | None = None,
    within: str | None = None,
    all_instances: bool = False,
    gpu: str | None = None,
    dtype: str | None = None,
    peak_tflops: float | None = None,
    peak_bandwidth_gbs: float | None = None,
    top: int = 5,
    categories: str | Path | None = None,
    launches: str = "thread",
    op_flops: bool = False,
) -> MfuReport:
    """Read a trace, find its FLOPs, and build the report.

    FLOPs may come from several sources at once: a file, the op ranges of the trace, the
    run-time count ``stagemfu.count_flops`` left beside it (``flops.json``) and the analyzer.
    The report uses the first of them in that order and shows the others side by side
    (``flops_<kind>`` columns), noting every stage where one differs by over 2 % and why.

    Parameters
    ----------
    trace
        An nsys SQLite export (compressed or not) or report, as :func:`stagemfu.postprocess.read` takes.
    flops
        FLOPs per stage given in Python: a mapping of stage to FLOPs or to ``{"flops", "bytes",
        "instances"}`` (the shapes a FLOPs file holds), or an :class:`~stagemfu.analyzer.Analysis`.
    flops_file
        Or FLOPs per stage from a file (:func:`read_flops_file`).
    model, config, inputs, counters
        Or FLOPs from the analyzer for this model (preset name or HF config path), a config
        overlay, a :class:`stagemfu.models.Inputs` and the counters to run (all by default).
        With neither, ``shapes.json`` beside the trace (written by ``stagemfu run``) names the
        model and its inputs.
    op_flops
        Count FLOPs from the op ranges ``emit_nvtx(record_shapes=True)`` left in the trace (or the
        ``cpu_op`` events of a torch.profiler trace recorded with ``record_shapes=True``)
        (:mod:`stagemfu.report.op_flops`): each stage covers its instances that hold op ranges,
        and GPU work follows the ``process`` launch rule, as the backward ops do.
    within
        Keep only range instances inside this range; by default ``measured`` when the trace has
        it (the timed repetition, not the warm-up), else every instance; with ``op_flops``, by
        default the instances holding op ranges, wherever they are.
    all_instances
        Keep every instance even when a ``measured`` range exists.
    gpu, dtype, peak_tflops, peak_bandwidth_gbs
        See :func:`stagemfu.report.peaks.resolve_peak`; ``dtype`` defaults to the FLOPs' dtype.
    top
        Kernels kept per stage.
    categories
        Extra kernel category rules (as ``stagemfu postprocess --categories``).
    launches
        Which ranges a GPU operation belongs to (as ``stagemfu postprocess --launches``).

    Raises
    ------
    StagemfuError
        Any input problem, in one line (trace, FLOPs file, model, peak).
    """
    path = Path(trace)
    run, run_notes = read_run_file(path)
    if flops is not None and flops_file is not None:
        raise FlopsFileError(f"{flops_file}: FLOPs given twice (flops and flops_file); give one")
    sources = []
    if flops is not None:
        sources.append(_flops_given(flops))
    elif flops_file is not None:
        sources.append(read_flops_file(flops_file))
    if model is not None or run.get("model"):
        sources.append(
            flops_for_model(
                model or run["model"],
                config=config,
                inputs=inputs,
                counters=counters,
                run=run if model is None else None,
            )
        )
    counted, counted_notes = read_counted_file(path)
    if counted is not None:
        sources.append(counted)
    found_notes = (*run_notes, *counted_notes)
    if not sources and not op_flops:
        why = "; ".join(found_notes) or (
            f"no {schemas.SHAPES_FILE} from `stagemfu run` nor {schemas.FLOPS_FILE} from stagemfu.count_flops "
            "beside the trace"
        )
        raise FlopsFileError(f"{path}: no FLOPs: pass --flops FILE, --model MODEL or --op-flops ({why})")
    tr = read(path, op_ranges=op_flops)
    if within is None and not all_instances and not op_flops and tr.ranges.filter(pl.col("name") == MEASURED).height:
        within = MEASURED  # with op_flops the instances holding op ranges are kept instead (the warm-up has none)
    within = None if all_instances else within
    if op_flops:
        st, ops = _op_flops(tr, within=within, categories=categories, top=top)
        sources.append(ops.flops)
    else:
        st = stage_times(tr, within=within, categories=categories, launches=launches)
    sources.sort(key=lambda sf: SOURCE_KINDS.index(sf.kind))
    peak = resolve_peak(
        tr.gpus,
        dtype=dtype or sources[0].dtype,
        gpu=gpu,
        peak_tflops=peak_tflops,
        peak_bandwidth_gbs=peak_bandwidth_gbs,
    )
    rep = build_report(st, sources[0], peak, top=top, run=run, others=sources[1:])
    notes = tuple(dict.fromkeys((*rep.notes, *found_notes)))
    if not op_flops:
        return dataclasses.replace(rep, notes=notes)
    return dataclasses.replace(
        rep,
        stages=_with_coverage(rep.stages, ops.coverage),
        uncounted_ops=ops.uncounted,
        notes=notes if sources[0] is ops.flops else (*notes, *ops.flops.notes),
    )


def _op_flops(tr: Trace, *, within: str | None, categories: str | Path | None, top: int) -> tuple[StageTimes, Any]:
    """Stage times of the instances holding op ranges, and their FLOPs counted from those ranges."""
    from stagemfu.postprocess.op_ranges import op_ranges
    from stagemfu.report.op_flops import count_op_flops, instances_note, partial_note, stage_op_flops

    opr = op_ranges(tr)
    if opr.ops.is_empty():
        raise FlopsFileError(
            f"{tr.path}: --op-flops: the trace holds no op ranges; record a few steps inside "
            "`with torch.autograd.profiler.emit_nvtx(record_shapes=True):` (nsys) or under "
            "`torch.profiler.profile(record_shapes=True)`"
        )
    opc = count_op_flops(opr)
    st = stage_times(
        dataclasses.replace(tr, ranges=opr.stage_ranges),
        within=within,
        categories=categories,
        launches="process",
        instances=opc.instances.filter(~pl.col("partial"))["range_id"],
    )
    ops = stage_op_flops(opc, st, source=f"op ranges of {tr.path.name}", top=top)
    notes = (*ops.flops.notes, *instances_note(st, opr), *partial_note(opc, opr))
    flops = dataclasses.replace(ops.flops, notes=notes)
    return st, dataclasses.replace(ops, flops=flops)


def _with_coverage(stages: pl.DataFrame, coverage: pl.DataFrame) -> pl.DataFrame:
    """Fill ``flops_coverage`` (share of kernel time inside counted ops) in the report's stage rows."""
    return stages.drop("flops_coverage").join(
        coverage.select("stage", "flops_coverage"), on="stage", how="left", maintain_order="left"
    )


def build_report(
    st: StageTimes,
    sf: StageFlops,
    peak: Peak,
    *,
    top: int = 5,
    run: dict[str, Any] | None = None,
    others: list[StageFlops] | tuple[StageFlops, ...] = (),
) -> MfuReport:
    """Join times, FLOPs and a peak into an :class:`MfuReport` (no I/O).

    ``others``: more sources of FLOPs, shown beside ``sf``'s as ``flops_<kind>`` columns.
    """
    joined = join(st, sf, peak)
    beside, unfit = [], []
    for other in others:
        try:
            beside.append((other, join(st, other, peak)))
        except FlopsMismatchError as err:  # a source shown for comparison does not stop the report
            unfit.append(f"{other.kind} FLOPs not shown beside the {sf.kind} FLOPs: {err}")
    rows, disagreements = side_by_side(joined.stages, sf, beside)
    rows = rows.with_columns(flops_coverage=pl.lit(None, pl.Float64))  # known for FLOPs from op ranges
    joined = dataclasses.replace(joined, stages=rows, notes=(*joined.notes, *disagreements, *unfit))
    names = joined.stages["stage"].to_list()
    if not names:
        raise StagemfuError(
            f"{st.trace.path}: no stage of the FLOPs ({', '.join(sf.stages['stage'].to_list()[:8])}) is an NVTX range "
            "of the trace; name the FLOPs' stages after the trace's ranges (see `stagemfu postprocess`)"
        )
    in_report = pl.any_horizontal([range_matches(n) for n in names])
    timeline = (
        st.instances.filter(in_report)
        .sort("start_ns")
        .select(
            pl.col("name").alias("stage"),
            "path",
            (pl.col("start_ns") - pl.col("start_ns").min()).alias("start_ns"),
            "wall_ns",
            "span_ns",
            "busy_ns",
            "idle_share",
        )
    )
    kernels = st.kernels.filter(in_report).filter(pl.int_range(pl.len()).over("domain", "name") < top)
    return MfuReport(
        stages=joined.stages,
        decode_steps=joined.decode_steps,
        model=model_totals(joined, peak),
        latency=latency(st, joined, batch=sf.batch),
        timeline=timeline,
        kernels=kernels,
        categories=st.categories.filter(in_report),
        peak=peak,
        flops=sf,
        times=st,
        run=dict(run or {}),
        notes=tuple(
            dict.fromkeys((*peak.notes, *joined.notes, *_several_gpus_note(st, in_report), *sf.notes, *st.notes))
        ),
        warnings=joined.warnings,
    )


def _several_gpus_note(st: StageTimes, in_report: pl.Expr) -> list[str]:
    """Say how times of several processes or GPUs add up, so the FLOPs given are of all of them.

    Each process of a multi-GPU run (one rank per GPU) has its own instances of every stage; their
    times add up to GPU-seconds, and FLOPs / (GPU-seconds × one GPU's peak) is the MFU of the
    GPUs together, provided the FLOPs are those of every rank.
    """
    pids = st.processes.filter(in_report, pl.col("gpu_instances") > 0).get_column("pid").n_unique()
    devices = st.devices.filter(in_report).get_column("device").n_unique()
    if pids <= 1 and devices <= 1:
        return []
    return [
        f"the stages ran in {pids} process(es) on {devices} GPU(s): their times are summed over them "
        "(GPU-seconds), so the peak is one GPU's and the FLOPs must be those of all processes together "
        "(with `instances` per process, a FLOPs file is scaled to the instances found)"
    ]


def _flops_given(flops: Mapping[str, Any] | Analysis) -> StageFlops:
    """FLOPs passed in Python to :func:`report`: an :class:`~stagemfu.analyzer.Analysis` or a mapping."""
    from stagemfu.analyzer import Analysis

    if isinstance(flops, Analysis):
        return flops_from_analysis(flops)
    if not isinstance(flops, Mapping):
        kind = type(flops).__name__
        raise FlopsFileError(f"flops: expected a mapping of stage name to FLOPs or an Analysis, not a {kind}")
    return flops_from_document(Document("flops mapping", dict(flops)))


def flops_for_model(
    model: str,
    *,
    config: Path | None = None,
    inputs: Any = None,
    counters: tuple[str, ...] | None = None,
    run: dict[str, Any] | None = None,
) -> StageFlops:
    """FLOPs per stage from the analyzer, for a model preset or config and its input shape.

    ``run`` (a ``run.json``) supplies the config overlay and inputs a recorded run used.
    """
    from stagemfu.analyzer import analyze
    from stagemfu.models import Inputs, load_model_spec

    if run:
        config = config or _run_path(run, "config")
        inputs = inputs or Inputs(**_inputs_fields(run.get("inputs") or {}))
    spec = load_model_spec(model, config=config)
    return flops_from_analysis(analyze(spec, inputs or Inputs(), counters=counters))


def read_counted_file(trace: Path) -> tuple[StageFlops | None, tuple[str, ...]]:
    """The run-time FLOP count ``stagemfu.count_flops`` left beside the trace (``flops.json`` or
    ``<trace stem>.flops.json``), as FLOPs of kind ``counted``, and notes on what was ignored.

    Its stages hold the FLOPs of one call of the step and how many times each stage ran in that
    call (``instances``), so the join scales them to the instances of the trace. Like the files
    ``stagemfu run`` leaves, one that cannot be read or does not fit
    :data:`.documents.RUN_COUNT_DOCUMENT` is ignored with a note.
    """
    doc, notes = _json_beside(trace, schemas.FLOPS_FILE, schema=RUN_COUNT_DOCUMENT)
    if not doc:
        return None, notes
    rows = [{"stage": name, "flops": e["flops"], "instances": e["calls"]} for name, e in doc["stages"].items()]
    source = f"run-time count {schemas.FLOPS_FILE} ({doc.get('counter') or 'torch'})"
    flops = StageFlops(
        stages=stage_table(rows),
        source=source,
        dtype=doc.get("dtype") or "bf16",
        notes=tuple(doc.get("notes") or ()),
        kind="counted",
    )
    return flops, ()


def read_run_file(trace: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """What ``stagemfu run`` wrote beside the trace, merged: ``run.json`` (command, times, GPUs,
    versions) and ``shapes.json`` (model, config, inputs), and notes on what was ignored.

    Either may be named ``<trace stem>.run.json``/``<trace stem>.shapes.json``; an empty dict when
    neither exists. These files are extras the user did not name, so one that cannot be read or
    does not fit its schema (:data:`.documents.RUN_DOCUMENT`) is ignored with a note instead of
    stopping the report; when the FLOPs had to come from it, :func:`report` says so in its error.
    """
    run, run_notes = _json_beside(trace, schemas.RUN_FILE)
    shapes, shapes_notes = _json_beside(trace, schemas.SHAPES_FILE)
    merged = {k: v for k, v in run.items() if k not in ("schema", "notes")}
    merged |= {k: shapes[k] for k in schemas.SHAPES_KEYS_READ if shapes.get(k) is not None}
    return (merged | {"_dir": str(trace.parent)} if merged else {}), (*run_notes, *shapes_notes)


def _json_beside(trace: Path, name: str, *, schema: Any = RUN_DOCUMENT) -> tuple[Any, tuple[str, ...]]:
    """The checked JSON object ``<trace stem>.NAME`` or ``NAME`` beside the trace and no notes; ``({}, ())``
    when neither exists, ``({}, (note,))`` when it is unreadable or does not fit ``schema``."""
    stem = trace.name
    for suffix in (".xz", ".gz", ".bz2", ".sqlite", ".nsys-rep", ".qdrep"):
        stem = stem.removesuffix(suffix)
    path = next((p for p in (trace.parent / f"{stem}.{name}", trace.parent / name) if p.is_file()), None)
    if path is None:
        return {}, ()
    try:
        doc = read_document(path, what="file stagemfu wrote beside the trace", error=FlopsFileError)
        return check_document(doc, schema, error=FlopsFileError), ()
    except FlopsFileError as err:
        return {}, (f"ignored {err}; fix or remove it",)


def _run_path(run: dict[str, Any], key: str) -> Path | None:
    value = run.get(key)
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(run["_dir"]) / path


def _inputs_fields(values: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import fields

    from stagemfu.models import Inputs

    known = {f.name for f in fields(Inputs)}
    out = {k: v for k, v in values.items() if k in known}
    if isinstance(out.get("image_size"), list):
        out["image_size"] = tuple(out["image_size"])
    return out
