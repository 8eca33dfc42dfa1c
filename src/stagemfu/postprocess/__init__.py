"""Postprocess: per-stage GPU times from an Nsight Systems trace.

Notebook use::

    from stagemfu import postprocess
    st = postprocess.load("run.sqlite", within="measured")
    st.ranges       # polars frame, one row per (domain, name)
    st.instances    # one row per range instance
    st.paths        # per path, e.g. measured/prefill/vision
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stagemfu.errors import TraceError
from stagemfu.postprocess.export import decompress_cached, export_sqlite, is_compressed, is_report
from stagemfu.postprocess.intervals import DEFAULT_CHUNK_ROWS
from stagemfu.postprocess.reader import Trace, read_trace
from stagemfu.postprocess.stages import StageTimes, stage_times

__all__ = ["StageTimes", "Trace", "load", "read", "read_trace", "stage_times"]


def read(path: str | Path) -> Trace:
    """Read a trace: an nsys SQLite export (optionally .xz/.gz/.bz2 compressed), or an
    .nsys-rep/.qdrep report, exported first with the nsys found on this machine."""
    path = Path(path)
    if not (is_report(path) or is_compressed(path)):
        return read_trace(path)
    sqlite = export_sqlite(path) if is_report(path) else decompress_cached(path)
    try:
        trace = read_trace(sqlite)
    except TraceError as err:  # speak of the file the user gave, not of our cached copy
        raise TraceError(str(err).replace(str(sqlite), str(path))) from err
    return dataclasses.replace(trace, path=path)


def load(
    path: str | Path,
    *,
    within: str | None = None,
    ranges: tuple[str, ...] = (),
    categories: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> StageTimes:
    """Read a trace and compute its per-stage times (see :func:`stage_times` for the options)."""
    return stage_times(read(path), within=within, ranges=ranges, categories=categories, chunk_rows=chunk_rows)
