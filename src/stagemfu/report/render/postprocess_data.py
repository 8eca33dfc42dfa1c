"""Plain data (dicts and lists) for ``stagemfu postprocess``: the JSON contract and the CSV tables.

``stagemfu.postprocess/1`` is a public contract: field names are fixed by ARCHITECTURE.md;
fields may be added, never renamed. Times are integer nanoseconds.
"""

from __future__ import annotations

import polars as pl

from stagemfu import schemas
from stagemfu.postprocess.stages import StageTimes

# Tables a user can pick for CSV output, in the order Markdown prints them.
TABLES = ("ranges", "paths", "instance_stats", "kernels", "categories", "processes", "devices", "instances")
# Several traces' own tables (postprocess_many); named here so the command's --table choices need no rich.
MANY_TABLES = ("combined", "stragglers")


def table(st: StageTimes, name: str, *, top: int | None = None) -> pl.DataFrame:
    """One of the result tables, with kernels cut to the ``top`` largest per stage."""
    frame: pl.DataFrame = getattr(st, name)
    if name == "kernels" and top is not None:
        frame = frame.filter(pl.int_range(pl.len()).over("domain", "name") < top)
    return frame


def postprocess_document(st: StageTimes, *, top: int | None = None, instances: bool = False) -> dict:
    """The ``stagemfu.postprocess/1`` JSON document; per-instance rows only when asked for.

    Metadata are plain values; each table is its polars frame, written as an array of row
    objects by :func:`stagemfu.report.render.json_stream.json_chunks` (a trace of op ranges
    holds a million rows: never turned into Python dicts).
    """
    trace = st.trace
    return {
        "schema": schemas.POSTPROCESS,
        "trace": trace.metadata(),
        "within": st.within,
        "gpus": trace.gpus,
        **{name: table(st, name, top=top) for name in TABLES if instances or name != "instances"},
        "unattributed": st.unattributed.to_dicts()[0],
        "totals": st.totals.to_dicts()[0],
        "notes": list(st.notes),
    }


def postprocess_tables(st: StageTimes, *, top: int | None = None) -> dict[str, pl.DataFrame]:
    """Every table of a :class:`StageTimes` by name, for the SQLite output: the :data:`TABLES`
    (per-instance rows included), ``gpus``, ``unattributed`` and ``totals``."""
    return {
        **{name: table(st, name, top=top) for name in TABLES},
        "gpus": st.trace.gpus,
        "unattributed": st.unattributed,
        "totals": st.totals,
    }


def postprocess_meta(st: StageTimes) -> dict:
    """The document's metadata (everything but its tables), for the SQLite output's ``stagemfu`` table."""
    doc = postprocess_document(st, top=0)
    return {k: v for k, v in doc.items() if k not in (*TABLES, "gpus", "unattributed", "totals")}
