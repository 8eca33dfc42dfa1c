"""Trace formats: one registry entry per format, chosen by what the file holds, not by its name.

A format is a :class:`TraceFormat`: a name, a test on the first bytes of the file (after
decompression when the file is gzip, xz or bzip2), the function that reads it into a
:class:`~stagemfu.postprocess.trace.Trace`, and the file name endings that mark its files in a
directory of traces. A reader registers itself with one call when its module is imported::

    register(TraceFormat("kineto", recognises=is_kineto_json, read=read_kineto, suffixes=(".trace.json",)))

and :data:`READERS` names the modules to import. :func:`read` checks the file, sniffs its first
bytes and hands it to the first format that recognises them.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from stagemfu.errors import TraceError
from stagemfu.files import input_problem
from stagemfu.postprocess.reader import not_an_export
from stagemfu.postprocess.trace import Progress, Trace

HEAD_BYTES = 1 << 16  # how much of a file (decompressed) the formats look at
# Modules that register a format when imported, in the order their tests are tried.
READERS = ("stagemfu.postprocess.nsys", "stagemfu.postprocess.kineto")
# Compressed files by their first bytes, and how to open them.
COMPRESSIONS: dict[bytes, Callable] = {b"\x1f\x8b": gzip.open, b"\xfd7zXZ\x00": lzma.open, b"BZh": bz2.open}
COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2")
# What reading or decompressing a damaged or truncated file raises.
READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


class Reader(Protocol):
    """Read one file of a format into a Trace (see :func:`read` for the options)."""

    def __call__(
        self, path: Path, *, chunk_ops: int | Literal["auto"] | None, progress: Progress | None, op_ranges: bool
    ) -> Trace:
        """The trace in ``path``; TraceError (or another StagemfuError) naming the file when it cannot be read."""


@dataclass(frozen=True)
class TraceFormat:
    """One trace format.

    Attributes
    ----------
    name
        What ``Trace.format`` says ("nsys").
    recognises
        True for the first bytes of a file of this format (after decompression, at most
        ``HEAD_BYTES``), given with the file's path for formats whose containers have no
        signature of their own.
    read
        Reads a file this format recognised (compressed or not, as the user gave it).
    suffixes
        File name endings of this format's traces, to pick them out of a directory.
    """

    name: str
    recognises: Callable[[bytes, Path], bool]
    read: Reader
    suffixes: tuple[str, ...]


FORMATS: dict[str, TraceFormat] = {}


def register(fmt: TraceFormat) -> TraceFormat:
    """Add a format to the registry; a second format of the same name is an error."""
    if FORMATS.setdefault(fmt.name, fmt) is not fmt:
        raise ValueError(f"two trace formats named {fmt.name!r}")
    return fmt


def formats() -> dict[str, TraceFormat]:
    """The registered formats, every reader module imported."""
    for module in READERS:
        importlib.import_module(module)
    return FORMATS


def read(
    path: str | Path,
    *,
    chunk_ops: int | Literal["auto"] | None = None,
    progress: Progress | None = None,
    op_ranges: bool = False,
) -> Trace:
    """Read a trace of any registered format.

    Parameters
    ----------
    path
        The trace file, compressed or not.
    chunk_ops, progress
        Passed to the format's reader (for nsys: read the GPU operations in time-ordered
        chunks of about this many, "auto" above 2 M; ``progress(step, done, total)``).
    op_ranges
        Include the per-op ranges that a format keeps apart from its stage ranges (Kineto's
        ``cpu_op`` events), for op FLOPs; formats whose op ranges are ranges anyway (nsys traces
        recorded under ``emit_nvtx``) hold them either way.

    Raises
    ------
    TraceError
        The file is missing, not a regular file, empty, or of no known format; or the format's
        reader refused it.
    """
    path = Path(path)
    head = _head(path)
    for fmt in formats().values():
        if fmt.recognises(head, path):
            return fmt.read(path, chunk_ops=chunk_ops, progress=progress, op_ranges=op_ranges)
    raise TraceError(f"{path}: {not_an_export(head)}")


def trace_suffixes() -> tuple[str, ...]:
    """The file name endings of every registered format (for picking traces out of a directory)."""
    return tuple(s for fmt in formats().values() for s in fmt.suffixes)


def _head(path: Path) -> bytes:
    """The first ``HEAD_BYTES`` of the file, decompressed when its own first bytes say it is compressed.

    Only regular files are read: a FIFO or a device would block the read forever.
    """
    problem = input_problem(path)
    if problem == "is a directory":
        raise TraceError(f"{path}: is a directory; give the path of a trace file")
    if problem is not None:
        raise TraceError(f"{path}: {problem}")
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
        if not head:
            raise TraceError(f"{path}: is empty; give the path of a complete trace file")
        opener = next((o for magic, o in COMPRESSIONS.items() if head.startswith(magic)), None)
        if opener is None:
            return head
        with opener(path, "rb") as fh:
            return fh.read(HEAD_BYTES)
    except READ_ERRORS as err:
        raise unreadable(path, err) from err


def unreadable(path: Path, err: BaseException) -> TraceError:
    """The one-line error for a file that failed while being read or decompressed (cut short, damaged)."""
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0] if str(err) else type(err).__name__
    return TraceError(f"{path}: cannot be read ({reason}); is it a complete file?")
