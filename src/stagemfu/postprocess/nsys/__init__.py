"""The Nsight Systems reader: an SQLite export (or a compressed one, or an .nsys-rep report) into a Trace.

Split by job: :mod:`.sqlite` (read-only connections, queries into polars, errors),
:mod:`.tables` (what each table and column means, into the format-neutral contract),
:mod:`.chunks` (exports too large to hold, read in time-ordered chunks). Reports and compressed
exports become a plain SQLite file first (:mod:`stagemfu.postprocess.export`). Importing this
package registers the format (:mod:`stagemfu.postprocess.formats`).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import polars as pl

from stagemfu.errors import TraceError
from stagemfu.postprocess import cache
from stagemfu.postprocess.export import (
    COMPRESSED_SUFFIXES,
    REPORT_SUFFIXES,
    decompress_cached,
    export_sqlite,
    is_compressed,
    is_report,
)
from stagemfu.postprocess.formats import TraceFormat, register
from stagemfu.postprocess.nsys import chunks
from stagemfu.postprocess.nsys import tables as nt
from stagemfu.postprocess.nsys.sqlite import columns, connect, damage_errors, quote, table_names, uri
from stagemfu.postprocess.reader import SQLITE_MAGIC, _check_file
from stagemfu.postprocess.trace import HeldOps, OpBatches, Progress, Trace

FORMAT = "nsys"
READ_STEPS = ("NVTX ranges", "GPU operations", "launching calls")


def read_nsys(
    path: str | Path,
    *,
    chunk_ops: int | Literal["auto"] | None = None,
    progress: Progress | None = None,
    op_ranges: bool = False,
) -> Trace:
    """Read an nsys trace: an SQLite export, compressed (.xz, .gz, .bz2) or not, or an .nsys-rep/.qdrep
    report, exported first with the nsys found on this machine (both kept in the cache).

    Parameters
    ----------
    path
        The file.
    chunk_ops
        Read the GPU operations later, in time-ordered chunks of about this many operations
        (:class:`~stagemfu.postprocess.nsys.chunks.OpChunks`), so memory stays bounded however
        large the export; by default all are read now. Planning the chunks needs one scan of the
        activity tables, which SQLite summarises in blocks, and a sample of the runtime table.
        "auto": chunks of ``AUTO_CHUNK_OPS`` when the export holds more than
        ``AUTO_IN_MEMORY_OPS`` operations, else all at once. 0 is the same as None (all at
        once), as on the command line.
    progress
        Called as ``progress("reading FILE: STEP", done, total)`` before each of the bulk reads.
    op_ranges
        Ignored: the op ranges of ``emit_nvtx`` are NVTX ranges, read with the others.

    Raises
    ------
    TraceError
        The file is missing, not SQLite, damaged, or lacks a table or column the numbers need;
        the message names the file the user gave and says what to do.
    ExportError
        A report could not be exported, or a compressed file not decompressed.
    ValueError
        ``chunk_ops`` is negative.
    """
    path = Path(path)
    if not (is_report(path) or is_compressed(path)):
        return _read_export(path, chunk_ops, progress)
    sqlite = export_sqlite(path) if is_report(path) else decompress_cached(path)
    try:
        trace = _read_export(sqlite, chunk_ops, progress)
    except TraceError as err:  # speak of the file the user gave, not of our cached copy
        raise TraceError(str(err).replace(str(sqlite), str(path))) from err
    return dataclasses.replace(trace, path=path, notes=(*trace.notes, *cache.take_notes()))


def _read_export(path: Path, chunk_ops: int | Literal["auto"] | None, progress: Progress | None) -> Trace:
    if chunk_ops == 0:
        chunk_ops = None
    elif chunk_ops != "auto" and chunk_ops is not None and chunk_ops < 0:
        raise ValueError(f"chunk_ops must be a positive number of operations, 0, None or 'auto', not {chunk_ops}")
    _check_file(path)
    with damage_errors(path):
        return _read(path, chunk_ops, progress)


def _read(path: Path, chunk_ops: int | Literal["auto"] | None, progress: Progress | None) -> Trace:
    """Read a file that looks like SQLite (the caller turns SQLite's errors into a TraceError)."""
    with connect(path) as db:
        tables = table_names(db)
        missing = [t for t in nt.REQUIRED_TABLES if t not in tables]
        if missing:
            raise TraceError(f"{path}: {nt.REQUIRED_TABLES[missing[0]]}")
        op_tables = [t for t in nt.GPU_OP_TABLES if t in tables]
        if not op_tables:
            raise TraceError(
                f"{path}: has no GPU activity (no kernel, memcpy, memset or CUDA graph table); "
                "profile with `nsys profile --trace=cuda,nvtx` and make sure the program uses the GPU"
            )
        cols = {t: columns(db, t) for t in (*op_tables, nt.RUNTIME_TABLE, "NVTX_EVENTS", "StringIds")}
        for table, names in cols.items():
            nt.require_columns(path, table, names)
        nsys_version, schema_version = nt.versions(db, tables)
        gpus = nt.gpus(db, tables)
        processes = nt.processes(db, tables)
        memcpy_labels = nt.memcpy_names(db, tables)
        launcher_ids = [r[0] for r in db.execute(nt.LAUNCHER_NAMES_SQL)]
        if chunk_ops == "auto":  # MAX(rowid) is one B-tree descent: an instant upper bound on the row count
            held = sum(db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {quote(t)}").fetchone()[0] for t in op_tables)
            chunk_ops = chunks.AUTO_CHUNK_OPS if held > chunks.AUTO_IN_MEMORY_OPS else None
    source = uri(path)

    def step(done: int) -> None:
        if progress:
            progress(f"reading {path.name}: {READ_STEPS[done]}", done, len(READ_STEPS))

    notes = []
    if gpus.is_empty():
        notes.append("the trace has no TARGET_INFO_GPU table: GPU names and SM counts are unknown")
    with ThreadPoolExecutor(1) as pool:  # the NVTX ranges are read while the operations are
        step(0)
        pending_ranges = pool.submit(nt.read_ranges, source, path, cols["NVTX_EVENTS"])
        ops: OpBatches
        if chunk_ops is not None:
            ops, name_ids = chunks.plan_chunks(
                source, path, {t: cols[t] for t in op_tables}, cols[nt.RUNTIME_TABLE], launcher_ids, chunk_ops, progress
            )
            notes.append(f"read in {len(ops)} time-ordered chunk(s) of about {chunk_ops:,} GPU operations")
            step(1)
        else:
            step(1)
            frame = pl.concat([nt.read_ops(source, path, t, cols[t]) for t in op_tables], how="vertical")
            name_ids = frame["name_id"]
            step(2)
            ops = HeldOps(nt.with_calls(source, path, frame, cols[nt.RUNTIME_TABLE], launcher_ids))
        names = nt.op_names(source, path, name_ids, memcpy_labels)
        ranges = pending_ranges.result()
    return Trace(
        path=path,
        format=FORMAT,
        tool_version=nsys_version,
        origin=f"nsys {nsys_version}, export schema {schema_version}",
        ranges=ranges,
        ops=ops,
        names=names,
        gpus=gpus,
        processes=processes,
        details={"nsys_version": nsys_version, "schema_version": schema_version},
        notes=tuple(notes),
    )


def recognises(head: bytes, path: Path) -> bool:
    """An SQLite file, or an nsys report (recognised by its name: the container has no published signature)."""
    return head.startswith(SQLITE_MAGIC) or path.name.lower().endswith(REPORT_SUFFIXES)


SUFFIXES = (".sqlite", *(f".sqlite{s}" for s in COMPRESSED_SUFFIXES), *REPORT_SUFFIXES)
register(TraceFormat(FORMAT, recognises=recognises, read=read_nsys, suffixes=SUFFIXES))
