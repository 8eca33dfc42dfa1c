"""Postprocess: per-stage GPU times from a trace (Nsight Systems; formats in :mod:`.formats`).

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

from pathlib import Path
from typing import Literal

from stagemfu.postprocess.formats import read
from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS
from stagemfu.postprocess.many import CombinedTimes, load_many
from stagemfu.postprocess.stages import StageTimes, stage_times
from stagemfu.postprocess.trace import Progress, Trace

__all__ = ["CombinedTimes", "StageTimes", "Trace", "load", "load_many", "read", "stage_times"]


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
    :func:`stagemfu.postprocess.nsys.read_nsys`). ``progress`` is called as the reading and
    computing steps begin.
    """
    trace = read(path, chunk_ops=chunk_ops, progress=progress)
    if progress:
        progress("computing stage times", 0, 1)
    return stage_times(
        trace, within=within, ranges=ranges, categories=categories, chunk_rows=chunk_rows, launches=launches
    )
