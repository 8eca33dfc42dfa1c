"""Many traces at once (one per rank, run or node): per-trace stage times, a combined table, stragglers.

Each trace is loaded on its own by :func:`stagemfu.postprocess.load`; the loads run on Dask, on a
local cluster of ``jobs`` worker processes or on an existing cluster given by its scheduler address,
so thousands of rank traces can be spread over machines. Only the small per-stage tables travel back
from the workers: a trace's per-operation and per-event frames stay where they were computed.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from stagemfu import deps
from stagemfu.errors import StagemfuError, TraceError
from stagemfu.notebook import Summarized
from stagemfu.postprocess.formats import trace_suffixes
from stagemfu.postprocess.metrics import SPREAD, SUMMED
from stagemfu.postprocess.stages import StageTimes
from stagemfu.postprocess.trace import Progress, no_ops

SPREAD_METRICS = tuple(SPREAD)
SUM_METRICS = ("instances", "gpu_instances", *SUMMED)
DEFAULT_THRESHOLD = 0.10
DASK = ("dask", "distributed")  # the stagemfu[dask] extra


@dataclass(frozen=True, repr=False)  # repr and Jupyter summary: stagemfu.notebook
class CombinedTimes(Summarized):
    """Stage times of several traces and how they compare.

    Attributes
    ----------
    traces
        One :class:`StageTimes` per input trace, in input order, without the per-operation
        frames (``ops`` and ``trace.ranges`` are empty, ``trace.ops`` holds no operation).
    labels
        The name each trace goes by in the tables: its path as found.
    combined
        One row per (domain, name) over all traces, in order of first appearance: ``traces``
        (how many hold the range), the sums of ``instances``, ``gpu_instances`` and the summed
        metrics (:data:`stagemfu.postprocess.metrics.METRICS`), and for each metric with a spread
        (wall, span, busy, kernel, comm) the per-trace ``*_min_ns``, ``*_median_ns``,
        ``*_max_ns`` (a median between two values is rounded to the nearest ns, ties to even).
    per_trace
        The per-trace ``ranges`` tables stacked, with a ``trace`` column first.
    stragglers
        Per (trace, domain, name) whose ``metric`` exceeds the median over the traces holding
        that range by more than ``threshold``: ``trace``, ``domain``, ``name``, ``value_ns``,
        ``median_ns``, ``excess`` (value / median - 1), largest excess first.
    metric, threshold
        What the straggler view compares (a ``*_ns`` column of the ranges table) and by how much.
    """

    traces: tuple[StageTimes, ...]
    labels: tuple[str, ...]
    combined: pl.DataFrame
    per_trace: pl.DataFrame
    stragglers: pl.DataFrame
    metric: str = "busy_ns"
    threshold: float = DEFAULT_THRESHOLD
    notes: tuple[str, ...] = field(default=())


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Trace files named by ``inputs``: files as given, every trace file in a directory, glob matches.

    Directories and patterns are expanded in sorted order; a file named twice is kept once.

    Raises
    ------
    TraceError
        An input that is neither a file, a directory holding traces, nor a pattern that matches one.
    """
    found: dict[Path, None] = {}
    for item in map(str, inputs):
        if any(c in item for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if _is_trace_file(Path(p)))
            if not matches:
                raise TraceError(f"{item}: the pattern matches no trace file ({', '.join(trace_suffixes())})")
        elif Path(item).is_dir():
            matches = sorted(p for p in Path(item).iterdir() if _is_trace_file(p))
            if not matches:
                raise TraceError(f"{item}: the directory holds no trace file ({', '.join(trace_suffixes())})")
        else:
            matches = [Path(item)]  # a missing file is reported by the reader, naming it
        found.update(dict.fromkeys(matches))
    return list(found)


def _is_trace_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(trace_suffixes())


def load_many(
    inputs: Sequence[str | Path],
    *,
    within: str | None = None,
    ranges: tuple[str, ...] = (),
    categories: str | Path | None = None,
    chunk_ops: int | Literal["auto"] | None = None,
    launches: str = "thread",
    jobs: int | None = None,
    scheduler: str | None = None,
    metric: str = "busy_ns",
    threshold: float = DEFAULT_THRESHOLD,
    progress: Progress | None = None,
) -> CombinedTimes:
    """Load several traces (on Dask) and compare their stages.

    Parameters
    ----------
    inputs
        Trace files, directories of traces, or glob patterns (see :func:`expand_inputs`).
    within, ranges, categories, chunk_ops, launches
        As for :func:`stagemfu.postprocess.load`, applied to every trace.
    jobs
        Worker processes of the local Dask cluster; by default one per trace up to the number of
        cores, or none when Dask is not installed: the traces then load one after the other in
        this process, and a note says so. With 1 they always load that way, without Dask.
    scheduler
        Address of a running Dask scheduler (``tcp://host:8786``); the traces load on its workers,
        which must see the same paths. Overrides ``jobs``.
    metric
        The ranges-table column the straggler view compares (``busy_ns`` by default).
    threshold
        A trace straggles on a stage when its ``metric`` exceeds the median by more than this
        fraction (0.10: 10 %).
    progress
        Called as ``progress("traces", done, total)`` as traces finish.

    Returns
    -------
    CombinedTimes
    """
    if metric not in SPREAD_METRICS:
        raise StagemfuError(f"straggler metric {metric!r} is not one of {', '.join(SPREAD_METRICS)}")
    if threshold < 0:
        raise StagemfuError(f"straggler threshold {threshold} is negative; give a fraction such as 0.1")
    paths = expand_inputs(inputs)
    options = {
        "within": within,
        "ranges": ranges,
        "categories": categories,
        "chunk_ops": chunk_ops,
        "launches": launches,
    }
    workers = jobs if jobs is not None else min(len(paths), os.cpu_count() or 1)
    notes: tuple[str, ...] = ()
    if scheduler is None and jobs is None and workers > 1:
        no_dask = deps.problem(*DASK, needed_for="loading them in parallel")
        if no_dask:
            workers, notes = 1, (f"{len(paths)} traces loaded one after the other: {no_dask}",)
    if scheduler is None and workers <= 1:
        results = []
        for i, path in enumerate(paths):
            results.append(load_slim(path, **options))
            if progress:
                progress("traces", i + 1, len(paths))
    else:
        results = _on_dask(paths, options, workers=workers, scheduler=scheduler, progress=progress)
    combined = combine(results, [str(p) for p in paths], metric=metric, threshold=threshold)
    return dataclasses.replace(combined, notes=(*notes, *combined.notes))


def load_slim(path: Path, **options: object) -> StageTimes:
    """:func:`stagemfu.postprocess.load` without the per-operation frames (what a worker sends back).

    Runs in Dask worker processes, which the command's own heap setting does not reach.
    """
    from stagemfu.heap import return_large_blocks
    from stagemfu.postprocess import load

    return_large_blocks()
    st = load(path, **options)  # type: ignore[arg-type]
    trace = dataclasses.replace(st.trace, ops=no_ops(), ranges=st.trace.ranges.clear())
    return dataclasses.replace(st, trace=trace, ops=st.ops.clear())


def _on_dask(
    paths: list[Path], options: dict, *, workers: int, scheduler: str | None, progress: Progress | None
) -> list[StageTimes]:
    deps.require(*DASK, needed_for="loading several traces in parallel")
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        # One thread per worker: polars and the SQLite reader use the cores of their own process.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(load_slim, path, pure=False, **options) for path in paths]
            for done, _ in enumerate(as_completed(futures), start=1):
                if progress:
                    progress("traces", done, len(paths))
            return client.gather(futures)
    except OSError as err:
        if scheduler is None:
            raise
        raise StagemfuError(f"Dask scheduler {scheduler}: cannot connect ({err}); is it running?") from err
    finally:
        if cluster is not None:
            cluster.close()


def combine(
    results: Sequence[StageTimes],
    labels: Sequence[str],
    *,
    metric: str = "busy_ns",
    threshold: float = DEFAULT_THRESHOLD,
) -> CombinedTimes:
    """The combined table and the straggler view of per-trace results (see :class:`CombinedTimes`)."""
    per_trace = pl.concat(
        [st.ranges.select(pl.lit(label).alias("trace"), pl.all()) for st, label in zip(results, labels)],
        how="vertical",
    )
    value, median = pl.col(metric), pl.col("_median")
    stragglers = (
        per_trace.with_columns(_median=value.median().over("domain", "name"))
        .filter(median > 0, value > median * (1 + threshold))
        .select(
            "trace",
            "domain",
            "name",
            value.alias("value_ns"),
            median.round(0).cast(pl.Int64).alias("median_ns"),
            (value / median - 1).alias("excess"),
        )
        .sort("excess", descending=True, maintain_order=True)
    )
    notes = tuple(f"{label}: {note}" for st, label in zip(results, labels) for note in st.notes)
    return CombinedTimes(
        traces=tuple(results),
        labels=tuple(labels),
        combined=_combined(per_trace),
        per_trace=per_trace,
        stragglers=stragglers,
        metric=metric,
        threshold=threshold,
        notes=notes,
    )


def _combined(per_trace: pl.DataFrame) -> pl.DataFrame:
    spread = [
        agg(pl.col(m)).round(0).cast(pl.Int64).alias(f"{m.removesuffix('_ns')}_{label}_ns")
        for m in SPREAD_METRICS
        for label, agg in (("min", pl.Expr.min), ("median", pl.Expr.median), ("max", pl.Expr.max))
    ]
    return per_trace.group_by("domain", "name", maintain_order=True).agg(
        pl.col("trace").n_unique().cast(pl.Int64).alias("traces"),
        *[pl.col(c).sum() for c in SUM_METRICS],
        *spread,
    )
