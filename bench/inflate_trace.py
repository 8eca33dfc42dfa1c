#!/usr/bin/env python3
"""Make a large, realistic Nsight Systems SQLite export from a real one, for benchmarks.

    bench/inflate_trace.py IN.sqlite OUT.sqlite COPIES

The activity of IN (kernels, CUDA runtime calls, memcpys, memsets, synchronisations, CUDA graph
executions, NVTX ranges) is repeated COPIES times back to back in time, 1 ms apart; correlation ids
are shifted so that every copy keeps its own launch-to-operation links. Every other table is kept
as it is. Per-range results on OUT are therefore COPIES times those on IN (same ranges, same
kernels), which makes a benchmark on OUT check itself.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

# The tables whose rows are timed activity; each is repeated when present.
TIMED = (
    "CUPTI_ACTIVITY_KIND_KERNEL",
    "CUPTI_ACTIVITY_KIND_RUNTIME",
    "CUPTI_ACTIVITY_KIND_MEMCPY",
    "CUPTI_ACTIVITY_KIND_MEMSET",
    "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION",
    "CUPTI_ACTIVITY_KIND_GRAPH_TRACE",
    "NVTX_EVENTS",
)
GAP_NS = 1_000_000  # between the end of one copy and the start of the next


def inflate_trace(source: Path, target: Path, copies: int) -> None:
    """Write ``target``: ``source`` with its timed activity repeated ``copies`` times.

    Parameters
    ----------
    source
        An nsys SQLite export; it is copied, never modified.
    target
        Where the inflated export goes (replaced if it exists).
    copies
        How many times the activity occurs in ``target`` (1 gives a plain copy).

    Notes
    -----
    Copy ``k`` (from 0) is shifted by ``k`` periods in time, a period being the activity's extent
    plus :data:`GAP_NS`, and by ``k × (largest correlation id + 1)`` in correlation id, so no two
    copies share a launch. ``rangeId`` (nsys's id of a start/end range) is left null in the copies,
    as two ranges may not share it. The repetition is done in SQL, one ``INSERT … SELECT`` per
    table and copy, so inflating to tens of millions of kernels takes minutes, not hours.
    """
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    shutil.copyfile(source, target)
    with closing(sqlite3.connect(target)) as db, db:
        present = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
        tables = [t for t in TIMED if t in present]
        columns = {t: [row[1] for row in db.execute(f'pragma table_info("{t}")')] for t in tables}
        first, last, max_corr = None, None, 0
        for t in tables:
            lo, hi = db.execute(f'select min(start), max(coalesce("end", start)) from "{t}"').fetchone()
            if lo is not None:
                first = lo if first is None else min(first, lo)
                last = hi if last is None else max(last, hi)
            if "correlationId" in columns[t]:
                (corr,) = db.execute(f'select coalesce(max(correlationId), 0) from "{t}"').fetchone()
                max_corr = max(max_corr, corr)
        if first is None:
            return  # no timed activity: nothing to repeat
        period = last - first + GAP_NS
        for t in tables:
            (rows,) = db.execute(f'select coalesce(max(rowid), 0) from "{t}"').fetchone()
            names = ", ".join(f'"{c}"' for c in columns[t])
            for k in range(1, copies):
                shifted = ", ".join(_shifted(c, k * period, k * (max_corr + 1)) for c in columns[t])
                db.execute(f'insert into "{t}" ({names}) select {shifted} from "{t}" where rowid <= {rows}')


def _shifted(column: str, time_shift: int, corr_shift: int) -> str:
    """The SQL expression of ``column`` in a shifted copy."""
    if column in ("start", "end"):
        return f'"{column}" + {time_shift}'
    if column == "correlationId":
        return f'"{column}" + {corr_shift}'
    if column == "rangeId":
        return "NULL"
    return f'"{column}"'


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    inflate_trace(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
