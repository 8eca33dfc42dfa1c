"""``stagemfu cache info|clear``: the cache of decompressed and exported traces."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stagemfu import schemas
from stagemfu.cli import emit, format_option, json_text, output_option

if TYPE_CHECKING:
    from stagemfu.postprocess.cache import CacheStatus


@click.group()
def cache() -> None:
    """The cache of decompressed and exported traces.

    A compressed export (.sqlite.xz/.gz/.bz2) or an .nsys-rep report is turned into an SQLite
    file once and kept in $XDG_CACHE_HOME/stagemfu/exports (~/.cache when XDG_CACHE_HOME is unset
    or relative; $TMPDIR/stagemfu-UID/exports, with a note, when that cannot be written). Entries
    are found by the SHA-256 of the input's bytes, so a changed or different file never gets
    another's results. The cache holds at most STAGEMFU_CACHE_SIZE bytes (default 20G; K, M, G,
    T suffixes), the least recently used entries going first.

    \b
    Examples:
      stagemfu cache info
      stagemfu cache clear
    """


@cache.command()
@format_option(("table", "json"), help="table: lines for people; json: the stagemfu.cache/1 document.")
@output_option
def info(fmt: str, output: Path | None) -> None:
    """Where the cache is, its size and limit, and its entries (most recently used first)."""
    from stagemfu.postprocess.cache import status

    state = status()
    emit(json_text(_document(state)) if fmt == "json" else _text(state), output)


@cache.command()
def clear() -> None:
    """Remove every entry, and temporary files left by killed runs (inputs are never touched)."""
    from stagemfu.postprocess import cache as store

    removed = store.clear(store.configured_dir())
    if store.fallback_dir().is_dir():
        removed += store.clear(store.fallback_dir())
    emit(f"removed {len(removed)} entries, {_size(sum(e.size for e in removed))}\n", None)


def _document(state: CacheStatus) -> dict[str, object]:
    """The ``stagemfu.cache/1`` document: names and paths escaped, sizes in bytes."""
    return {
        "schema": schemas.CACHE,
        "location": _shown(str(state.location)),
        "configured": _shown(str(state.configured)),
        "unwritable": state.unwritable,
        "limit_bytes": state.limit,
        "bytes": state.size,
        "temporaries": state.temporaries,
        "entries": [
            {"name": _shown(e.path.name), "bytes": e.size, "last_used": _time(e.used)} for e in reversed(state.entries)
        ],
    }


def _text(state: CacheStatus) -> str:
    lines = [f"location  {_shown(str(state.location))}"]
    if state.unwritable:
        lines.append(f"          (instead of {_shown(str(state.configured))}, which {state.unwritable})")
    lines.append(
        f"entries   {len(state.entries)}, {_size(state.size)} (limit {_size(state.limit)}, STAGEMFU_CACHE_SIZE)"
    )
    if state.temporaries:
        lines.append(f"temporary {state.temporaries} (entries being made, or left by killed runs)")
    lines += [f"  {_size(e.size):>11}  {_time(e.used)}  {_shown(e.path.name)}" for e in reversed(state.entries)]
    return "\n".join(lines) + "\n"


def _shown(text: str) -> str:
    from stagemfu.report.render.text import one_line

    return one_line(text)


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def _time(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")
