"""Make the C heap give large freed blocks back to the system (glibc only).

Loading a big trace allocates and frees many work arrays of a few MB on many threads. glibc raises
its mmap threshold each time such a block is freed, so later blocks of that size come from
per-thread heaps that keep their pages: with 16 reading threads, peak memory grew by half. A fixed
threshold keeps every block of 1 MiB or more in its own mapping, returned when freed (10.5 M kernels
read in chunks on 16 threads: 949 MiB -> 633 MiB).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 1 << 20


def return_large_blocks() -> None:
    """Fix glibc's mmap threshold at 1 MiB, unless the user set one (``MALLOC_MMAP_THRESHOLD_``)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
