"""Make the C heap give large freed blocks back to the system (glibc only).

Loading a big trace allocates and frees many work arrays of a few MB on many threads. glibc raises
its mmap threshold each time such a block is freed, so later blocks of that size come from
per-thread heaps that keep their pages: with 16 reading threads, peak memory grew by half. A fixed
threshold keeps every larger block in its own mapping, returned when freed (10.5 M kernels read in
chunks on 16 threads: 949 MiB -> 633 MiB at 1 MiB).

The threshold trades memory for time: a mapped block costs a page fault per page when first
written and an munmap, paid again for every work array. At 2 MiB the arrays of one chunk's
columns (166 k operations of 8 bytes) stay in the heaps and are reused; on the 16-core GPU host,
10.5 M kernels: 6.5 to 6.8 s in 594 to 602 MiB at 1 MiB, 5.9 to 6.7 s in 707 to 763 MiB at 2 MiB,
5.5 to 6.2 s in 918 to 1,020 MiB at 3 or 4 MiB (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 2 << 20


def return_large_blocks() -> None:
    """Fix glibc's mmap threshold at 2 MiB, unless the user set one (``MALLOC_MMAP_THRESHOLD_``)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
