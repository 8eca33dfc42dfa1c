"""Turn a compressed export or an .nsys-rep/.qdrep report into a plain SQLite export, once.

The SQLite file goes to the cache (:mod:`stagemfu.postprocess.cache`: keyed by the input's
content, checked, bounded), never next to the input. Decompression looks at the first block
before writing the rest (a file of zeros is refused at once, not after filling the disk) and
stops before the cache's disk would fill; ``nsys export`` runs under a time limit
(:func:`stagemfu.collect.nsys.export_report`). Whatever comes out is checked by
:func:`check_export` before it is cached or used.
"""

from __future__ import annotations

import contextlib
import importlib
import lzma
import shutil
import sqlite3
import zlib
from pathlib import Path
from typing import BinaryIO

from stagemfu.collect.nsys import export_report, find_nsys
from stagemfu.errors import ExportError, TraceError
from stagemfu.files import input_problem, sqlite_uri
from stagemfu.postprocess import cache
from stagemfu.postprocess.reader import SQLITE_MAGIC, not_an_export

REPORT_SUFFIXES = (".nsys-rep", ".qdrep")
COMPRESSED_SUFFIXES = {".xz": "lzma", ".gz": "gzip", ".bz2": "bz2"}
HOW_TO_EXPORT = "export it yourself with `nsys export --type sqlite REPORT` and pass the .sqlite file"
HEADER_BYTES = 100  # the SQLite database header
BLOCK = 1 << 20
# Decompression leaves this much of the cache's disk free: 1 GiB, or a twentieth of a smaller disk.
RESERVE_BYTES = 1 << 30
DECOMPRESS_ERRORS = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error)
NSYS_TABLE = "StringIds"  # in every nsys export, with or without GPU or NVTX data


def is_report(path: Path) -> bool:
    """True for an Nsight Systems report container rather than an SQLite export."""
    return path.suffix.lower() in REPORT_SUFFIXES


def is_compressed(path: Path) -> bool:
    """True for a compressed SQLite export (``trace.sqlite.xz``, ``.gz``, ``.bz2``)."""
    return path.suffix.lower() in COMPRESSED_SUFFIXES


def decompress_cached(path: Path) -> Path:
    """Decompress a compressed export once into the cache and return the SQLite file's path.

    Raises
    ------
    TraceError
        ``path`` is not a regular file.
    ExportError
        It cannot be decompressed, or what comes out is not a complete nsys SQLite export.
    CacheError
        The cache's disk cannot take it.
    """
    _check_source(path)
    return cache.cached(path, kind="decompress", make=lambda target: _decompress(path, target), usable=_usable)


def export_sqlite(report: Path) -> Path:
    """Export ``report`` to SQLite (or reuse a cached export) and return the SQLite path.

    Raises
    ------
    TraceError
        ``report`` is not a regular file.
    ExportError
        nsys is not found, fails, runs past its time limit, or writes something that is not an
        nsys SQLite export (then nothing is cached: the next run tries again).
    """
    _check_source(report)

    def make(target: Path) -> None:
        nsys = find_nsys()
        if nsys is None:
            raise ExportError(
                f"{report}: is an Nsight Systems report and nsys was not found (set NSYS=/path/to/nsys or put "
                f"it on PATH), or {HOW_TO_EXPORT}"
            )
        export_report(nsys, report, target, how_to=HOW_TO_EXPORT)
        check_export(target, report, made_by="`nsys export`")

    return cache.cached(report, kind="nsys-export", make=make, usable=_usable)


def _check_source(path: Path) -> None:
    problem = input_problem(path)
    if problem is not None:
        raise TraceError(f"{path}: {problem}")


def _decompress(source: Path, target: Path) -> None:
    """Decompress ``source`` to ``target``: the SQLite header first, then at most what the disk can spare."""
    module = importlib.import_module(COMPRESSED_SUFFIXES[source.suffix.lower()])
    room = _room(target.parent)
    with module.open(source, "rb") as src, open(target, "wb") as out:
        head = _read(src, source, HEADER_BYTES)
        if not head.startswith(SQLITE_MAGIC):
            raise ExportError(f"{source}: decompressed, it {not_an_export(head)}")
        out.write(head)
        written = len(head)
        while block := _read(src, source, BLOCK):
            written += len(block)
            if written > room:
                raise ExportError(
                    f"{source}: decompresses to more than the {_size(room)} that {target.parent} can take while "
                    f"keeping {_size(_reserve(target.parent))} free; free space there or set XDG_CACHE_HOME to a "
                    "larger disk"
                )
            out.write(block)
    check_export(target, source, made_by="decompression")


def _read(src: BinaryIO, source: Path, size: int) -> bytes:
    """Up to ``size`` decompressed bytes (fewer only at the end); a damaged stream is one line."""
    parts, wanted = [], size
    try:
        while wanted > 0 and (part := src.read(wanted)):
            parts.append(part)
            wanted -= len(part)
    except DECOMPRESS_ERRORS as err:
        raise ExportError(f"{source}: cannot be decompressed ({err}); is it a complete {source.suffix} file?") from err
    return b"".join(parts)


def _reserve(directory: Path) -> int:
    return min(RESERVE_BYTES, shutil.disk_usage(directory).total // 20)


def _room(directory: Path) -> int:
    """Bytes a decompression may write into ``directory``: its disk's free space less the reserve."""
    return max(0, shutil.disk_usage(directory).free - _reserve(directory))


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.1f} GiB"


def _header_problem(path: Path) -> str | None:
    """What the SQLite header says is wrong with ``path`` (not SQLite, cut short), or None."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    if not head.startswith(SQLITE_MAGIC):
        return not_an_export(head)
    if len(head) < HEADER_BYTES:
        return "is an SQLite file cut short inside its header; export the report again"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    counted = head[24:28] == head[92:96]  # the header's page count is valid only when these agree
    size = path.stat().st_size
    if counted and pages and size < page_size * pages:
        return (
            f"is an SQLite file cut short: its header says {pages} pages of {page_size} bytes, the file has "
            f"{size} bytes; is it complete?"
        )
    return None


def _usable(entry: Path) -> bool:
    """A cheap check of a cache entry before it is served: the header and the size it implies."""
    try:
        return _header_problem(entry) is None
    except OSError:
        return False


def check_export(path: Path, source: Path, *, made_by: str) -> None:
    """Check that ``path`` is a complete nsys SQLite export before it is cached or used.

    It must carry the SQLite header, be as long as the header says, open, and hold nsys's
    :data:`NSYS_TABLE`. Errors name ``source`` (the user's file) and ``made_by`` (what wrote it).

    Raises
    ------
    ExportError
        Saying what is wrong.
    """
    try:
        problem = _header_problem(path)
    except OSError as err:
        raise ExportError(f"{source}: {made_by} wrote nothing readable ({err.strerror})") from err
    if problem is None:
        try:
            with contextlib.closing(sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True)) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as err:
            problem = f"is a damaged SQLite file ({err})"
        else:
            if NSYS_TABLE not in tables:
                problem = f"is an SQLite database but not an nsys export (it has no {NSYS_TABLE} table)"
    if problem is not None:
        raise ExportError(f"{source}: {made_by} gave a file that {problem}")
