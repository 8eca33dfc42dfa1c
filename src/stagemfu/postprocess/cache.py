"""The cache of decompressed and exported traces: keyed by content, checked, bounded.

A compressed export (``trace.sqlite.xz``) or an ``.nsys-rep`` report becomes a plain SQLite
file before it is read. That file goes to this cache, never next to the input (which may be
read-only and must stay untouched), so the next run on the same trace skips the work.

- **Key**: the SHA-256 of the input's bytes and of what was done to them. A different file never
  gets another file's results, whatever its name, size or time stamps. Hashing reads the input
  once more (twice on a miss, to see that it did not change while it was read): about 1.2 s per
  GiB of compressed trace on a 2-core AMD EPYC (sha256 0.85 GiB/s there, with the CPU's SHA
  instructions; blake2b 0.45 GiB/s), small beside decompressing or exporting it.
- **Checked**: an entry is stored only after its maker's check passed (SQLite header, complete
  size, nsys tables: :func:`stagemfu.postprocess.export.check_export`), and each hit is checked
  again for the header and size, so a damaged entry is made anew rather than served.
- **Whole or absent**: entries are made in a temporary directory beside them and renamed into
  place; an error, Ctrl-C or SIGTERM removes the temporary directory. Ones left by a killed
  process are removed a day later.
- **Bounded**: at most ``STAGEMFU_CACHE_SIZE`` bytes (default 20G; K, M, G, T suffixes; 0 keeps
  only the entry in use), the least recently used entries removed first.
- **Where**: ``$XDG_CACHE_HOME/stagemfu/exports``, with ``~/.cache`` when ``XDG_CACHE_HOME`` is
  unset or relative (as the XDG specification says). When that cannot be written (read-only,
  a file in its place, /proc), ``$TMPDIR/stagemfu-UID/exports`` is used, and a note says so once.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from stagemfu.errors import CacheError, TraceError
from stagemfu.files import TEMP_PREFIX

SIZE_ENV = "STAGEMFU_CACHE_SIZE"
DEFAULT_SIZE = 20 * 2**30
STALE_TEMP_S = 24 * 3600  # a temporary directory untouched this long belongs to a killed process
ENTRY_SUFFIX = ".sqlite"
KEY_CHARS = 32  # hex digits of the SHA-256 kept in an entry's name (128 bits)
HASH_BLOCK = 1 << 20
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_noted: set[str] = set()  # fallback notes already given in this process
_pending: list[str] = []  # notes not yet taken by take_notes()


@dataclass(frozen=True)
class CacheEntry:
    """One cached SQLite file: its path, size in bytes and last use (seconds since the epoch)."""

    path: Path
    size: int
    used: float


@dataclass(frozen=True)
class CacheStatus:
    """What ``stagemfu cache info`` shows.

    Attributes
    ----------
    location
        The directory in use.
    configured
        The directory the environment asks for (``location`` unless it cannot be written).
    unwritable
        Why ``configured`` is not used, or None.
    limit
        The bound in bytes (``STAGEMFU_CACHE_SIZE``).
    entries
        The entries, least recently used first.
    temporaries
        Entries being made, or left by killed processes.
    """

    location: Path
    configured: Path
    unwritable: str | None
    limit: int
    entries: tuple[CacheEntry, ...]
    temporaries: int

    @property
    def size(self) -> int:
        """Bytes held by the entries."""
        return sum(e.size for e in self.entries)


def status() -> CacheStatus:
    """Where the cache is and what it holds.

    Raises
    ------
    CacheError
        ``STAGEMFU_CACHE_SIZE`` is not a size.
    """
    configured = configured_dir()
    why = _unwritable(configured)
    location = configured if why is None else fallback_dir()
    return CacheStatus(location, configured, why, size_limit(), tuple(entries(location)), len(temporaries(location)))


def configured_dir() -> Path:
    """``$XDG_CACHE_HOME/stagemfu/exports``; ``~/.cache`` stands in for an unset or relative XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "stagemfu" / "exports"


def fallback_dir() -> Path:
    """The per-user cache under the system's temporary directory, for when the configured one is unwritable."""
    return Path(tempfile.gettempdir()) / f"stagemfu-{os.getuid()}" / "exports"


def cache_dir() -> Path:
    """The directory entries go to: :func:`configured_dir`, else :func:`fallback_dir` (noted once).

    Raises
    ------
    CacheError
        Neither can be written.
    """
    configured = configured_dir()
    why = _unwritable(configured)
    if why is None:
        return configured
    fallback = fallback_dir()
    fallback_why = _unwritable(fallback, private=True)
    if fallback_why is not None:
        raise CacheError(
            f"no writable cache directory: {configured} {why}, {fallback} {fallback_why}; set XDG_CACHE_HOME "
            "to a writable directory"
        )
    if str(configured) not in _noted:
        _noted.add(str(configured))
        _pending.append(
            f"cache {configured} {why}: decompressed and exported traces go to {fallback} instead (set "
            "XDG_CACHE_HOME to a writable directory to keep them there)"
        )
    return fallback


def take_notes() -> tuple[str, ...]:
    """Notes about the cache not yet shown (its fallback location); each is returned once."""
    notes = tuple(_pending)
    _pending.clear()
    return notes


def _unwritable(directory: Path, *, private: bool = False) -> str | None:
    """Why files cannot be created in ``directory`` (made when missing), or None when they can.

    With ``private`` the directory is made user-only and must be owned by this user and not be a
    link, as a shared temporary directory lets others create it first.
    """
    try:
        if private:
            directory.parent.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(directory.parent)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                return f"is not a directory of this user ({directory.parent})"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
        with tempfile.TemporaryFile(dir=directory, prefix=TEMP_PREFIX):
            pass
    except OSError as err:
        return f"cannot be written ({err.strerror or err})"
    return None


def size_limit() -> int:
    """The cache's bound in bytes, from ``STAGEMFU_CACHE_SIZE`` (default 20G).

    Raises
    ------
    CacheError
        The variable is not a size.
    """
    raw = os.environ.get(SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_SIZE
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", raw, flags=re.IGNORECASE)
    if found is None:
        raise CacheError(f"{SIZE_ENV}={raw!r}: not a size; give bytes or a number with K, M, G or T (e.g. 20G)")
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


def content_key(path: Path, kind: str) -> str:
    """Hex SHA-256 (first :data:`KEY_CHARS` digits) of ``kind`` and the bytes of ``path``.

    Raises
    ------
    OSError
        ``path`` cannot be read.
    """
    digest = hashlib.sha256(kind.encode() + b"\0")
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb") as fh:
        while size := fh.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()[:KEY_CHARS]


def entries(directory: Path | None = None) -> list[CacheEntry]:
    """The finished entries of the cache, least recently used first."""
    directory = configured_dir() if directory is None else directory
    found = []
    with suppress(OSError):
        for path in directory.iterdir():
            if path.name.startswith(TEMP_PREFIX) or not path.name.endswith(ENTRY_SUFFIX):
                continue
            with suppress(OSError):
                info = path.stat()
                found.append(CacheEntry(path, info.st_size, info.st_mtime))
    return sorted(found, key=lambda e: e.used)


def temporaries(directory: Path) -> list[Path]:
    """Temporary files and directories in ``directory`` (entries being made, or left by a killed process)."""
    with suppress(OSError):
        return sorted(p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))
    return []


def cached(
    source: Path,
    *,
    kind: str,
    make: Callable[[Path], None],
    usable: Callable[[Path], bool],
) -> Path:
    """The cache entry of ``source`` under ``kind``, made by ``make`` when there is none.

    Parameters
    ----------
    source
        The user's file; only read.
    kind
        What ``make`` does to it (part of the key): "decompress", "nsys-export".
    make
        Writes the entry's SQLite file at the path it is given (inside a temporary directory) and
        checks it, raising a :class:`~stagemfu.errors.StagemfuError` when it is not an export.
    usable
        A quick check of an existing entry (header, size); an entry failing it is made anew.

    Raises
    ------
    CacheError
        The cache cannot be written, or ``source`` changed while it was being read.
    """
    directory = cache_dir()
    key = _source_key(source, kind)
    hit = next(directory.glob(f"{key}-*{ENTRY_SUFFIX}"), None)
    if hit is not None:
        if usable(hit):
            with suppress(OSError):
                os.utime(hit)  # last use, for eviction
            return hit
        hit.unlink(missing_ok=True)
    target = directory / f"{key}-{_entry_name(source)}"
    work = directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        work.mkdir()
        made = work / f"entry{ENTRY_SUFFIX}"
        make(made)
        if _source_key(source, kind) != key:
            raise CacheError(f"{source}: changed while it was being read; run again once it is complete")
        os.replace(made, target)
    except OSError as err:
        raise CacheError(
            f"{directory}: cannot hold the SQLite file of {source} ({err.strerror or err}); free space there "
            "or set XDG_CACHE_HOME to another disk"
        ) from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    evict(directory, keep=target)
    return target


def _source_key(source: Path, kind: str) -> str:
    try:
        return content_key(source, kind)
    except OSError as err:
        raise TraceError(f"{source}: cannot be read ({err.strerror or err})") from err


def _entry_name(source: Path) -> str:
    """A readable entry name: the source's name without compression or report suffixes, in safe characters."""
    name = source.name
    for suffix in (".xz", ".gz", ".bz2", ".nsys-rep", ".qdrep", ENTRY_SUFFIX):
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] + ENTRY_SUFFIX


def evict(directory: Path, *, keep: Path | None = None, limit: int | None = None) -> list[CacheEntry]:
    """Remove the least recently used entries until the cache holds at most ``limit`` bytes.

    ``keep`` (the entry in use) is never removed; temporary directories left by killed processes
    (older than :data:`STALE_TEMP_S`) are. Returns the entries removed.
    """
    limit = size_limit() if limit is None else limit
    now = time.time()
    for temp in temporaries(directory):
        with suppress(OSError):
            if now - temp.lstat().st_mtime > STALE_TEMP_S:
                _remove(temp)
    found = entries(directory)
    total = sum(e.size for e in found)
    removed = []
    for entry in found:
        if total <= limit:
            break
        if keep is not None and entry.path == keep:
            continue
        with suppress(FileNotFoundError):
            entry.path.unlink()
        total -= entry.size
        removed.append(entry)
    return removed


def clear(directory: Path | None = None) -> list[CacheEntry]:
    """Remove every entry, and temporary files left by killed processes; returns the entries removed."""
    return evict(configured_dir() if directory is None else directory, limit=0)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
