"""Match GPU operations to the CUDA API calls that launched them.

An operation and its call share a correlation id within one process (nsys's rule). Matching is a
sorted lookup — each operation's (process, correlation id) key binary-searched among the sorted
call keys — rather than a hash join: the same result for a fraction of the memory on traces with
millions of kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

CORRELATION_LIMIT = 1 << 40
BITMAP_LIMIT = 1 << 28  # widest id range (largest - smallest) given a membership bitmap (256 MiB of bools)


def match_calls(op_pid: np.ndarray, op_corr: np.ndarray, call_pid: np.ndarray, call_corr: np.ndarray) -> np.ndarray:
    """For each operation, the index of the call that launched it, or -1.

    Operations and calls name their process by the same kind of id (``op_pid``, ``call_pid``).

    A key that appears twice among the calls resolves to the first of them. An operation with a
    negative correlation id (none recorded) has no call.

    Raises
    ------
    ValueError
        Correlation ids outside [0, 2^40), which no nsys export holds.
    """
    if (len(call_corr) and call_corr.min() < 0) or any(
        len(c) and c.max() >= CORRELATION_LIMIT for c in (op_corr, call_corr)
    ):
        raise ValueError("correlation ids outside [0, 2^40)")
    if len(call_corr) == 0:
        return np.full(len(op_corr), -1, dtype=np.int64)
    if _one_value(call_pid, op_pid):  # one process (the usual case): the correlation id is the key
        call_key, op_key = call_corr, op_corr  # a negative id matches no call
    else:
        pids = np.sort(pl.concat([pl.Series(call_pid), pl.Series(op_pid)]).unique().to_numpy())
        call_key = _key(pids, call_pid, call_corr)
        op_key = np.where(op_corr >= 0, _key(pids, op_pid, op_corr), -1)  # -1: no call has a negative key
    if bool(np.all(call_key[1:] >= call_key[:-1])):  # calls come in id order within a process: no sort
        pos = np.minimum(np.searchsorted(call_key, op_key), len(call_key) - 1)
        return np.where(call_key[pos] == op_key, pos, -1)
    order = np.argsort(call_key, kind="stable")
    sorted_keys = call_key[order]
    pos = np.minimum(np.searchsorted(sorted_keys, op_key), len(order) - 1)
    return np.where(sorted_keys[pos] == op_key, order[pos], -1)


def _one_value(*arrays: np.ndarray) -> bool:
    """True when all the (non-empty) arrays hold one and the same value."""
    filled = [a for a in arrays if len(a)]
    lows, highs = {int(a.min()) for a in filled}, {int(a.max()) for a in filled}
    return len(lows) == 1 and lows == highs


def _key(pids: np.ndarray, global_pid: np.ndarray, correlation_id: np.ndarray) -> np.ndarray:
    """One int64 per (process, correlation id): the process's rank in the high bits."""
    return np.searchsorted(pids, global_pid).astype(np.int64) * CORRELATION_LIMIT + correlation_id


def membership(ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A fast "is this id in ``ids``?" test for batches of ids.

    Correlation ids are per-process counters, so a bitmap indexed by id (less the smallest id)
    answers with one gather; ids spread too widely for a bitmap fall back to binary search in
    the sorted ids.
    """
    lo, top = (int(ids.min()), int(ids.max())) if len(ids) else (0, -1)
    if 0 <= top - lo < BITMAP_LIMIT:
        bitmap = np.zeros(top - lo + 2, dtype=bool)  # from the smallest id: a chunk's ids need a small one
        bitmap[ids - lo] = True

        def in_bitmap(values: np.ndarray) -> np.ndarray:
            return bitmap[np.clip(values - lo, -1, top - lo + 1)]  # below lo (-1) and past top land on False

        return in_bitmap
    ordered = np.unique(ids)

    def in_sorted(values: np.ndarray) -> np.ndarray:
        if len(ordered) == 0:
            return np.zeros(len(values), dtype=bool)
        pos = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
        return ordered[pos] == values

    return in_sorted
