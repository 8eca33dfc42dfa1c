"""Write minimal nsys-like SQLite exports of a chosen shape, for benchmarks of shapes no recording has.

Only the tables and columns stagemfu reads are written: NVTX_EVENTS (push/pop ranges with inline
text), StringIds (kernel names and launching API names), CUPTI_ACTIVITY_KIND_RUNTIME (one
``cudaLaunchKernel`` call per kernel) and CUPTI_ACTIVITY_KIND_KERNEL, on one process and thread.
Rows go in with ``executemany`` from plain tuples, so a million rows take seconds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

PID = 4242
GLOBAL_TID = (PID << 24) | PID  # nsys packs the process id above bit 24 and the thread id below
NVTX_PUSHPOP = 59
LAUNCH_NAME_ID = 1


def write_export(
    path: Path,
    *,
    ranges: Iterable[tuple[int, int, str]],
    launches: Iterable[tuple[int, int, int, int, int]],
    kernel_names: Sequence[str],
) -> Path:
    """Write an export and return its path.

    Parameters
    ----------
    path
        The file to (re)write.
    ranges
        ``(start, end, text)`` of each push/pop range.
    launches
        ``(call_start, call_end, kernel_start, kernel_end, name)`` of each kernel, ``name`` an
        index into ``kernel_names``; the correlation id is the launch's position.
    kernel_names
        Kernel names, interned into StringIds.
    """
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT);
        CREATE TABLE NVTX_EVENTS (start INTEGER, "end" INTEGER, eventType INTEGER, text TEXT,
            globalTid INTEGER, textId INTEGER, domainId INTEGER, endGlobalTid INTEGER);
        CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER, "end" INTEGER, globalTid INTEGER,
            correlationId INTEGER, nameId INTEGER);
        CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER, "end" INTEGER, deviceId INTEGER,
            streamId INTEGER, correlationId INTEGER, globalPid INTEGER, demangledName INTEGER);
        CREATE TABLE TARGET_INFO_GPU (id INTEGER, name TEXT, smCount INTEGER, clockRate INTEGER);
        INSERT INTO TARGET_INFO_GPU VALUES (0, 'NVIDIA H100 80GB HBM3', 132, 1980000000);
        """
    )
    db.execute("INSERT INTO StringIds VALUES (?, 'cudaLaunchKernel')", (LAUNCH_NAME_ID,))
    db.executemany(
        "INSERT INTO StringIds VALUES (?, ?)", ((LAUNCH_NAME_ID + 1 + i, n) for i, n in enumerate(kernel_names))
    )
    db.executemany(
        "INSERT INTO NVTX_EVENTS VALUES (?, ?, ?, ?, ?, NULL, 0, NULL)",
        ((start, end, NVTX_PUSHPOP, text, GLOBAL_TID) for start, end, text in ranges),
    )
    calls, kernels = [], []
    for corr, (call_start, call_end, start, end, name) in enumerate(launches, start=1):
        calls.append((call_start, call_end, GLOBAL_TID, corr, LAUNCH_NAME_ID))
        kernels.append((start, end, 0, 7, corr, PID << 24, LAUNCH_NAME_ID + 1 + name))
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, ?, ?, ?)", calls)
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (?, ?, ?, ?, ?, ?, ?)", kernels)
    db.commit()
    db.close()
    return path
