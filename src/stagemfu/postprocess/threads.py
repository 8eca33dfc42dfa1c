"""One number per thread: the ranges' (pid, tid) pairs numbered densely, and any pair looked up.

Attribution sorts operations by launching thread and finds each range's operations among those of
its thread, so ranges and operations need one thread number in a shared numbering. A trace's
threads are few; its operations are millions. The pairs are packed into one int64 (when both
ids fit 31 bits, as operating-system ids do) and looked up by binary search among the ranges'
packed pairs, so a batch of operations costs two array operations and a search, with no join.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import polars as pl

ID_LIMIT = 1 << 31  # ids below this pack two to an int64, in (pid, tid) order
T = TypeVar("T")


@dataclass(frozen=True)
class ThreadIndex:
    """The threads that hold ranges, numbered 0, 1, ... in (pid, tid) order.

    Attributes
    ----------
    pid, tid
        The ids of thread k at position k.
    """

    pid: np.ndarray
    tid: np.ndarray

    @classmethod
    def of(cls, ranges: pl.DataFrame) -> ThreadIndex:
        """From a range tree's ranges (``thread``, ``pid``, ``tid``; see :mod:`stagemfu.postprocess.tree`)."""
        threads = ranges.select("thread", "pid", "tid").unique("thread").sort("thread")
        return cls(threads["pid"].to_numpy(), threads["tid"].to_numpy())

    def keys(self, pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
        """The thread number of each (pid, tid): k for the ranges' thread k; for a thread without
        ranges, a number from ``len(self.pid)`` on, the same for the same pair within one call."""
        known, wanted = _codes(self.pid, self.tid, pid, tid)
        n = len(known)
        if len(wanted) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(known, wanted), max(n - 1, 0))
        hit = known[pos] == wanted if n else np.zeros(len(wanted), dtype=bool)
        keys = np.where(hit, pos, -1).astype(np.int64)
        if not hit.all():
            missing = wanted[~hit]
            distinct = np.sort(pl.Series(missing).unique().to_numpy())
            keys[~hit] = n + np.searchsorted(distinct, missing)
        return keys


def _codes(
    known_pid: np.ndarray, known_tid: np.ndarray, pid: np.ndarray, tid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per pair, ordered as (pid, tid), for the known pairs (ascending) and the wanted ones.

    Packed when every id fits 31 bits; otherwise both sets are numbered by one dense rank.
    """
    if all(len(a) == 0 or (a.min() >= 0 and a.max() < ID_LIMIT) for a in (known_pid, known_tid, pid, tid)):
        return known_pid * ID_LIMIT + known_tid, pid * ID_LIMIT + tid
    both = pl.DataFrame({"pid": np.concatenate([known_pid, pid]), "tid": np.concatenate([known_tid, tid])})
    rank = both.select(pl.struct("pid", "tid").rank("dense").cast(pl.Int64)).to_series().to_numpy()
    return rank[: len(known_pid)], rank[len(known_pid) :]


def packed_thread(pid: str, tid: str) -> pl.Expr:
    """(pid, tid) as one int64, ``pid * ID_LIMIT + tid``: ordered as the pair and unique while both
    ids stay below ``ID_LIMIT``, as operating-system ids do (the main thread's is
    ``pid * ID_LIMIT + pid``). For code that relates threads of several frames by one column."""
    return pl.col(pid) * ID_LIMIT + pl.col(tid)


def main_thread(thread: T) -> T:
    """The packed id (:func:`packed_thread`) of the main thread of each packed thread's process:
    the thread whose id is the process id (see :class:`stagemfu.postprocess.trace.Trace`). Works
    on numpy arrays and polars expressions alike."""
    return thread - thread % ID_LIMIT + thread // ID_LIMIT
