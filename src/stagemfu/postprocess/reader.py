"""The checks an nsys SQLite export passes before the reader opens it (:mod:`stagemfu.postprocess.nsys`).

The file must exist, be readable and start as an SQLite database does; anything else gets one
line saying what the file seems to be and what to do.
"""

from __future__ import annotations

from pathlib import Path

from stagemfu.errors import TraceError
from stagemfu.files import input_problem

SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_file(path: Path) -> None:
    """Only a regular file that starts as SQLite does is read (a FIFO would block the reader forever)."""
    problem = input_problem(path)
    if problem == "is a directory":
        raise TraceError(f"{path}: is a directory; give the path of an nsys SQLite export")
    if problem is not None:
        raise TraceError(f"{path}: {problem}")
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as err:
        raise TraceError(f"{path}: cannot be read ({err.strerror})") from err
    if not head:
        raise TraceError(f"{path}: is empty; re-export the report with `nsys export --type sqlite`")
    if not head.startswith(SQLITE_MAGIC):
        raise TraceError(f"{path}: {not_an_export(head)}")


def not_an_export(head: bytes) -> str:
    """Say what a file that is not an nsys SQLite export seems to be, and what to do."""
    if head.lstrip()[:1] in (b"{", b"["):
        return (
            "is JSON (a PyTorch/Kineto profiler trace?), not an nsys export; stagemfu reads Nsight Systems "
            "traces: profile with `nsys profile --trace=cuda,nvtx` and pass the .nsys-rep or its SQLite export"
        )
    return "is not an SQLite file; export an nsys report with `nsys export --type sqlite REPORT.nsys-rep`"
