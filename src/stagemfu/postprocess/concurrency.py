"""How many threads the postprocess pipeline uses, and the bounded map they share.

The work is numpy, polars and SQLite, which all release the GIL in their loops, so threads run
it in parallel without the copies a process pool would make. Every map is bounded: a generator
of chunks is never drained ahead of the consumer, so memory stays a few chunks deep.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CPUS = os.cpu_count() or 1
# Chunks of a chunked read in flight at once, each read and attributed by its own thread. Two
# from 2 cores (one is read while the other is attributed: 16.3 -> 14.0 s at 10.5 M kernels on
# two cores), six from 16 cores (10.5 M kernels: 6.1 s with four, 5.3 s with six, 5.6 s with
# eight; docs/benchmarks.md), each reduced by REDUCE_THREADS threads.
CHUNK_WORKERS = 1 if CPUS < 2 else max(2, min(6, CPUS * 3 // 8))
REDUCE_THREADS = min(2, CPUS)  # threads reducing one chunk's (range, operation) pairs


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """``pool.map`` in order that takes at most ``depth`` items ahead of the consumer."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
