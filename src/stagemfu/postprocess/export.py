"""Turn an .nsys-rep/.qdrep report into an SQLite export with the user's nsys.

The export goes to a cache directory (never next to the input, which may be read-only and must
stay untouched), keyed by the report's path, size and modification time, so a second run on the
same report reads the cached file.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import tempfile
import zlib
from pathlib import Path

from stagemfu.collect.nsys import export_report, find_nsys
from stagemfu.errors import ExportError
from stagemfu.postprocess.reader import SQLITE_MAGIC, not_an_export

REPORT_SUFFIXES = (".nsys-rep", ".qdrep")
COMPRESSED_SUFFIXES = {".xz": "lzma", ".gz": "gzip", ".bz2": "bz2"}
HOW_TO_EXPORT = "export it yourself with `nsys export --type sqlite REPORT` and pass the .sqlite file"


def is_report(path: Path) -> bool:
    """True for an Nsight Systems report container rather than an SQLite export."""
    return path.suffix.lower() in REPORT_SUFFIXES


def is_compressed(path: Path) -> bool:
    """True for a compressed SQLite export (``trace.sqlite.xz``, ``.gz``, ``.bz2``)."""
    return path.suffix.lower() in COMPRESSED_SUFFIXES


def _cache_target(source: Path) -> Path:
    """Where ``source``'s SQLite lives in the cache: a changed file (size, mtime) gets a new entry."""
    if not source.is_file():
        raise ExportError(f"{source}: no such file")
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_dir() / f"{source.name}-{key}.sqlite"


def decompress_cached(path: Path) -> Path:
    """Decompress a compressed export once into the cache directory and return the copy's path."""
    import importlib

    target = _cache_target(path)
    if target.is_file():
        return target
    module = importlib.import_module(COMPRESSED_SUFFIXES[path.suffix.lower()])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        try:
            with module.open(path, "rb") as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
            Path(tmp.name).unlink(missing_ok=True)
            raise ExportError(f"{path}: cannot be decompressed ({err}); is it a complete {path.suffix} file?") from err
    with open(tmp.name, "rb") as fh:
        head = fh.read(64)
    if not head.startswith(SQLITE_MAGIC):
        Path(tmp.name).unlink(missing_ok=True)
        raise ExportError(f"{path}: {not_an_export(head)}")
    os.replace(tmp.name, target)
    return target


def cache_dir() -> Path:
    """The export cache, ``$XDG_CACHE_HOME/stagemfu/exports`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stagemfu" / "exports"


def export_sqlite(report: Path) -> Path:
    """Export ``report`` to SQLite (or reuse a cached export) and return the SQLite path.

    Raises
    ------
    ExportError
        ``report`` is missing, nsys is not found, or it failed to export this report.
    """
    target = _cache_target(report)
    if target.is_file():
        return target
    nsys = find_nsys()
    if nsys is None:
        raise ExportError(
            f"{report}: is an Nsight Systems report and nsys was not found (set NSYS=/path/to/nsys or put "
            f"it on PATH), or {HOW_TO_EXPORT}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "export.sqlite"  # a failed export never leaves a half-written cache entry
        export_report(nsys, report, out, how_to=HOW_TO_EXPORT)
        os.replace(out, target)
    return target
