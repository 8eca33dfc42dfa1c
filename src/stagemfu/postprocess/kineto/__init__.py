"""The torch.profiler (Kineto) reader: a Chrome-trace JSON file (.json, .json.gz, .json.xz) into a Trace.

What ``prof.export_chrome_trace(PATH)`` and ``torch.profiler.tensorboard_trace_handler`` write
(``*.pt.trace.json[.gz]``, one file per rank). Split by job: :mod:`.scan` (the file in blocks, as
event texts; never the whole document in memory), :mod:`.events` (a block's events reduced to
columns by role; exact microseconds to nanoseconds), :mod:`.build` (the columns into the
format-neutral trace). Stages are the ``user_annotation`` events (``record_function``), GPU
operations the ``kernel``, ``gpu_memcpy`` and ``gpu_memset`` events, tied to the
``cuda_runtime``/``cuda_driver`` call with the same correlation id: the same rules as for nsys.
Importing this package registers the format (:mod:`stagemfu.postprocess.formats`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from stagemfu.postprocess.formats import TraceFormat, register
from stagemfu.postprocess.kineto.build import FORMAT, Collector
from stagemfu.postprocess.kineto.scan import BOM, scan_events
from stagemfu.postprocess.trace import Progress, Trace

SUFFIXES = (".trace.json", ".trace.json.gz", ".trace.json.xz", ".trace.json.bz2")


def read_kineto(
    path: str | Path,
    *,
    chunk_ops: int | Literal["auto"] | None = None,
    progress: Progress | None = None,
    op_ranges: bool = False,
) -> Trace:
    """Read a torch.profiler trace (Kineto's Chrome-trace JSON, compressed with gzip, xz or bzip2 or not).

    Parameters
    ----------
    path
        The file.
    chunk_ops
        Accepted for the reader interface: a Kineto trace's operations are kept as numbers
        (about 80 bytes each) and always held in memory; a number is noted as not applying.
    progress
        Called as ``progress("reading NAME", bytes read, file size)`` as the file is read.
    op_ranges
        Also read the aten ops (``cpu_op`` events) as op ranges, named as ``emit_nvtx`` names
        them, with their ``Input Dims`` as sizes: what ``report --op-flops`` counts.

    Raises
    ------
    TraceError
        The file is unreadable, cut short, not a Kineto trace, or holds no GPU operation.
    """
    path = Path(path)
    collector = Collector(op_ranges=op_ranges)
    header = scan_events(path, collector.add, progress=progress)
    trace = collector.trace(path, header)
    if isinstance(chunk_ops, int) and chunk_ops > 0:
        note = "--chunk-ops does not apply to torch.profiler traces: their GPU operations are held in memory"
        trace = dataclasses.replace(trace, notes=(*trace.notes, note))
    return trace


def recognises(head: bytes, path: Path) -> bool:
    """JSON: an object or an array at the start (the reader says what is missing when it is not Kineto's)."""
    return head.removeprefix(BOM).lstrip()[:1] in (b"{", b"[")


register(TraceFormat(FORMAT, recognises=recognises, read=read_kineto, suffixes=SUFFIXES))
