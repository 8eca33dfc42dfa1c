"""Postprocess: per-stage GPU times from an Nsight Systems trace.

Notebook use::

    from stagemfu import postprocess
    st = postprocess.load("run.sqlite", within="measured")
    st.ranges       # polars frame, one row per (domain, name)
    st.instances    # one row per range instance
    st.paths        # per path, e.g. measured/prefill/vision
    st.processes    # per process (multi-rank exports); comm_ns/overlap_ns: NCCL time, overlap

    big = postprocess.load("serving.sqlite", chunk_ops=1_000_000)   # bounded memory, same numbers
    ranks = postprocess.load_many(["ranks/"], jobs=8)               # on Dask
    ranks.combined  # sums and per-trace min/median/max per stage
    ranks.stragglers
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from stagemfu.errors import TraceError
from stagemfu.postprocess import cache
from stagemfu.postprocess.export import decompress_cached, export_sqlite, is_compressed, is_report
from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS
from stagemfu.postprocess.many import CombinedTimes, load_many
from stagemfu.postprocess.reader import Progress, Trace, read_trace
from stagemfu.postprocess.stages import StageTimes, stage_times

__all__ = ["CombinedTimes", "StageTimes", "Trace", "load", "load_many", "read", "read_trace", "stage_times"]


def read(
    path: str | Path, *, chunk_ops: int | Literal["auto"] | None = None, progress: Progress | None = None
) -> Trace:
    """Read a trace: an nsys SQLite export (optionally .xz/.gz/.bz2 compressed), or an
    .nsys-rep/.qdrep report, exported first with the nsys found on this machine.

    ``chunk_ops`` and ``progress`` are passed to :func:`read_trace`."""
    path = Path(path)
    if not (is_report(path) or is_compressed(path)):
        return read_trace(path, chunk_ops=chunk_ops, progress=progress)
    sqlite = export_sqlite(path) if is_report(path) else decompress_cached(path)
    try:
        trace = read_trace(sqlite, chunk_ops=chunk_ops, progress=progress)
    except TraceError as err:  # speak of the file the user gave, not of our cached copy
        raise TraceError(str(err).replace(str(sqlite), str(path))) from err
    return dataclasses.replace(trace, path=path, notes=(*trace.notes, *cache.take_notes()))


def load(
    path: str | Path,
    *,
    within: str | None = None,
    ranges: tuple[str, ...] = (),
    categories: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_ops: int | Literal["auto"] | None = None,
    progress: Progress | None = None,
    launches: str = "thread",
) -> StageTimes:
    """Read a trace and compute its per-stage times (see :func:`stage_times` for the options).

    With ``chunk_ops`` the GPU operations are read and attributed in time-ordered chunks of
    about that many, so memory stays bounded on any size of export; the numbers are the same,
    but ``StageTimes.ops`` is left empty. "auto" chunks only large exports (see
    :func:`read_trace`). ``progress`` is called as the reading and computing steps begin.
    """
    trace = read(path, chunk_ops=chunk_ops, progress=progress)
    if progress:
        progress("computing stage times", 0, 1)
    return stage_times(
        trace, within=within, ranges=ranges, categories=categories, chunk_rows=chunk_rows, launches=launches
    )
