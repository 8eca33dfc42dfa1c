"""Matching operations to their launching calls agrees with a plain dictionary on dense, sparse,
repeated and multi-process keys, and on operations without a correlation id."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagemfu.postprocess.launches import match_calls

PIDS = [1 << 24, 7 << 24, 9 << 24]


def reference(op_pid, op_corr, call_pid, call_corr):
    first = {}
    for i, (pid, corr) in enumerate(zip(call_pid, call_corr)):
        first.setdefault((pid, corr), i)
    return [first.get((pid, corr), -1) if corr >= 0 else -1 for pid, corr in zip(op_pid, op_corr)]


def arrays(calls, ops):
    call_pid = np.array([PIDS[p] for p, _ in calls], dtype=np.int64)
    call_corr = np.array([c for _, c in calls], dtype=np.int64)
    op_pid = np.array([PIDS[p] for p, _ in ops], dtype=np.int64)
    op_corr = np.array([c for _, c in ops], dtype=np.int64)
    return op_pid, op_corr, call_pid, call_corr


ids = st.one_of(st.integers(0, 60), st.integers(0, 1 << 39))  # dense counters, or spread too wide for a table


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(st.tuples(st.integers(0, 2), ids), max_size=60),
    ops=st.lists(st.tuples(st.integers(0, 2), st.one_of(ids, st.just(-1))), max_size=60),
)
def test_match_calls_equals_a_dictionary(calls, ops):
    op_pid, op_corr, call_pid, call_corr = arrays(calls, ops)
    got = match_calls(op_pid, op_corr, call_pid, call_corr)
    assert got.tolist() == reference(op_pid, op_corr, call_pid, call_corr)


def test_dense_counters_of_two_processes_with_the_same_ids():
    n = 100_000
    rng = np.random.default_rng(0)
    call_pid = np.repeat([PIDS[0], PIDS[1]], n)
    call_corr = np.tile(np.arange(10, 10 + n), 2)
    pick = rng.integers(0, 2 * n, 50_000)
    got = match_calls(call_pid[pick], call_corr[pick], call_pid, call_corr)
    assert (got == pick).all()


def test_a_repeated_key_resolves_to_the_first_call():
    call_pid = np.array([PIDS[0], PIDS[0], PIDS[0]], dtype=np.int64)
    call_corr = np.array([5, 6, 5], dtype=np.int64)
    got = match_calls(np.array([PIDS[0]]), np.array([5]), call_pid, call_corr)
    assert got.tolist() == [0]
    ordered = match_calls(np.array([PIDS[0]] * 2), np.array([6, 5]), call_pid, np.array([5, 5, 6]))
    assert ordered.tolist() == [2, 0]  # calls already in id order take the path without a sort


def test_correlation_ids_out_of_range_are_refused():
    with pytest.raises(ValueError, match="outside"):
        match_calls(np.array([PIDS[0]]), np.array([1]), np.array([PIDS[0]]), np.array([-4]))
    with pytest.raises(ValueError, match="outside"):
        match_calls(np.array([PIDS[0]]), np.array([1 << 41]), np.array([PIDS[0]]), np.array([1]))
