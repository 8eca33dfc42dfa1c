"""The format-neutral trace: what every reader produces, and all that the computations read.

A reader (:mod:`stagemfu.postprocess.nsys`, one module per trace format, registered in
:mod:`stagemfu.postprocess.formats`) turns a file into a :class:`Trace`: NVTX-style ranges,
GPU operations with the CPU calls that launched them, the GPUs, the processes, and notes. Times
are integer nanoseconds on the trace's own clock; processes and threads are explicit ``pid`` and
``tid`` columns (a format that packs them into one number unpacks them in its reader). Nothing
after the reader knows which tool wrote the trace.

GPU operations come as batches (:class:`OpBatches`): one batch when the trace is held in memory
(:class:`HeldOps`), time-ordered chunks read on demand when it is too large to hold. Callers
map a function over the batches and never ask which kind they have; batches are cut where no
operation runs on any GPU, so sums, unions, first starts and last ends of the batches combine
exactly into those of the whole trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import polars as pl

S = TypeVar("S")
R = TypeVar("R")
# Progress callback: ``progress(what, done, total)`` as a long step advances (the CLI draws a bar).
Progress = Callable[[str, int, int], None]

OP_KINDS = ("kernel", "memcpy", "memset", "graph")
OP_KIND_TYPE = pl.Enum(list(OP_KINDS))
KERNEL_KINDS = ("kernel", "graph")  # operations whose time counts as kernel time

RANGES_SCHEMA = {
    "range_id": pl.Int64,  # unique in the trace (nsys: the event's row id)
    "domain": pl.Utf8,
    "name": pl.Utf8,
    "style": pl.Utf8,  # "PushPop" (nested on its thread by construction) or "StartEnd"
    "start": pl.Int64,
    "end": pl.Int64,  # null: never ended (the capture stopped inside it)
    "pid": pl.Int64,
    "tid": pl.Int64,
    "end_tid": pl.Int64,  # null unless the range ended on another thread than it started on
}
OPS_SCHEMA = {
    "kind": OP_KIND_TYPE,
    "start": pl.Int64,
    "end": pl.Int64,
    "device": pl.Int32,
    "stream": pl.Int32,
    "correlation_id": pl.Int64,  # ties the operation to its launching call within its process
    "pid": pl.Int64,  # the process that launched it
    "name_id": pl.Int64,  # see Trace.names
    "call_start": pl.Int64,  # the launching call; the three are null when the trace has no such call
    "call_end": pl.Int64,
    "tid": pl.Int64,  # the launching thread
}
NAMES_SCHEMA = {"name_id": pl.Int64, "name": pl.Utf8}
GPUS_SCHEMA = {"id": pl.Int64, "name": pl.Utf8, "sms": pl.Int64, "clock_hz": pl.Int64}
PROCESSES_SCHEMA = {"pid": pl.Int64, "name": pl.Utf8}


class OpBatches(Protocol):
    """The GPU operations of a trace as time-ordered batches, each a frame of ``OPS_SCHEMA``."""

    def __len__(self) -> int:
        """Number of batches."""

    @property
    def held(self) -> pl.DataFrame | None:
        """All operations as one frame when the trace holds them in memory, else None."""

    def map(
        self, fn: Callable[[pl.DataFrame, S], R], before: Callable[[pl.DataFrame], S], workers: int = 1
    ) -> Iterator[R]:
        """``fn(batch, before(batch))`` for every batch, results in time order.

        ``before`` runs on the batches one at a time in time order (for the little work that
        depends on earlier batches); ``fn`` may run on ``workers`` batches at once.
        """


@dataclass(frozen=True)
class HeldOps:
    """Operations held in memory: one batch."""

    frame: pl.DataFrame

    def __len__(self) -> int:
        return 1

    @property
    def held(self) -> pl.DataFrame:
        return self.frame

    def map(
        self, fn: Callable[[pl.DataFrame, S], R], before: Callable[[pl.DataFrame], S], workers: int = 1
    ) -> Iterator[R]:
        yield fn(self.frame, before(self.frame))


def no_ops() -> HeldOps:
    """An empty batch of operations (a trace whose operations were dropped after use)."""
    return HeldOps(pl.DataFrame(schema=OPS_SCHEMA))


@dataclass(frozen=True)
class Trace:
    """One trace in the format-neutral form (times in ns, ints).

    Attributes
    ----------
    path
        The file the user gave.
    format
        Name of the format it was read as (``"nsys"``; see :mod:`stagemfu.postprocess.formats`).
    tool_version
        Version of the tool that wrote it ("unknown" when the file does not say).
    origin
        Which tool wrote it, for headers: "nsys 2025.3.2, export schema 3.20.3".
    details
        What else the format records about its origin, as text: for nsys ``nsys_version`` and
        ``schema_version`` (of the SQLite export), kept in the JSON outputs for compatibility.
    ranges
        One row per range event (``RANGES_SCHEMA``).
    ops
        The GPU operations (``OPS_SCHEMA``) in batches.
    names
        ``name_id`` → ``name`` for every operation name, each string once.
    gpus
        The devices: ``id``, ``name``, ``sms``, ``clock_hz`` (the maximum clock the tool records).
    processes
        ``pid`` and ``name`` of the processes the trace names. A process's main thread (the one
        it started on) has the process's id as its ``tid``, as on Linux: the ``--launches
        process`` rule relies on it.
    notes
        What the reader noticed and the user should know.
    """

    path: Path
    format: str
    tool_version: str
    origin: str
    ranges: pl.DataFrame
    ops: OpBatches
    names: pl.DataFrame
    gpus: pl.DataFrame
    processes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PROCESSES_SCHEMA))
    details: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def metadata(self) -> dict[str, str]:
        """The trace's block in the JSON outputs: ``path``, ``format``, ``tool_version`` and the details."""
        return {"path": str(self.path), "format": self.format, "tool_version": self.tool_version, **self.details}
