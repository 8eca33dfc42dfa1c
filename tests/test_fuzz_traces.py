"""Fuzzing the trace reader: damaged pages and schema drift on copies of real exports.

Every input gives per-stage times or one :class:`TraceError` naming the file; never another
exception (a driver error, a polars panic), never a negative time, and the input's bytes never
change. Hypothesis draws the damage: pages of the recorded fixtures overwritten, zeroed, flipped
or cut off; columns renamed, dropped or filled with text, floats, nulls or bytes that are not
UTF-8; start and end swapped. The budget is about a minute in all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import lzma
import random
import sqlite3
from pathlib import Path

import polars as pl
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagemfu import postprocess
from stagemfu.errors import TraceError
from stagemfu.postprocess.stages import StageTimes
from stagemfu.report.render.json_stream import json_chunks
from stagemfu.report.render.postprocess_data import postprocess_document

FUZZ = settings(max_examples=35, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SMALL_FIXTURES = ("named_domain", "cuda_graph_node", "cuda_graph_graph")
# The tables and columns the reader touches (others are never read, so damage there proves nothing).
READ_COLUMNS = {
    "StringIds": ("id", "value"),
    "NVTX_EVENTS": ("start", "end", "eventType", "text", "globalTid", "textId", "domainId", "endGlobalTid"),
    "CUPTI_ACTIVITY_KIND_KERNEL": (
        "start",
        "end",
        "deviceId",
        "streamId",
        "correlationId",
        "globalPid",
        "demangledName",
        "shortName",
    ),
    "CUPTI_ACTIVITY_KIND_RUNTIME": ("start", "end", "globalTid", "correlationId", "nameId"),
    "CUPTI_ACTIVITY_KIND_MEMCPY": ("start", "end", "correlationId", "copyKind", "globalPid"),
    "TARGET_INFO_GPU": ("id", "name", "smCount", "clockRate"),
    "META_DATA_EXPORT": ("name", "value"),
    "ENUM_CUDA_MEMCPY_OPER": ("id", "label"),
}
NOT_UTF8 = "CAST(X'66ff6fc328' AS TEXT)"  # 'f', a stray byte, 'o', a cut two-byte sequence
INSTANTS = ("start_ns", "end_ns")  # times on the trace's clock, which may be negative; the rest are durations
VALUES = ("'text'", "1.5", "NULL", NOT_UTF8, "-1", "9223372036854775807", "X'00ff'")


@functools.cache
def original(name: str) -> bytes:
    """The bytes of a small fixture's export."""
    return lzma.decompress((FIXTURES / f"{name}.sqlite.xz").read_bytes())


def load_or_refuse(path: Path, **options: object) -> StageTimes | None:
    """Load ``path``; a refusal must be one TraceError line naming the file; the file must not change."""
    before = hashlib.sha256(path.read_bytes()).digest()
    try:
        st = postprocess.load(path, **options)  # type: ignore[arg-type]
    except TraceError as err:
        assert str(path) in str(err) and "\n" not in str(err), err
        st = None
    assert hashlib.sha256(path.read_bytes()).digest() == before
    if st is not None:
        check_result(st)
    return st


def check_result(st: StageTimes) -> None:
    """No negative duration in any table, and the JSON document is written and parses."""
    for frame in (st.instances, st.ranges, st.paths, st.totals, st.unattributed, st.kernels):
        for column in frame.columns:
            if column.endswith("_ns") and column not in INSTANTS:
                assert frame.filter(pl.col(column) < 0).is_empty(), (column, frame)
    json.loads(b"".join(json_chunks(postprocess_document(st, instances=True))))


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, list[tuple[str, float, int]]]:
    """A fixture and one to three page damages: (how, where as a fraction of the pages, seed)."""
    name = draw(st.sampled_from(SMALL_FIXTURES))
    hows = st.sampled_from(("zero", "random", "flip", "cut"))
    return name, draw(st.lists(st.tuples(hows, st.floats(0, 1), st.integers(0, 2**16)), min_size=1, max_size=3))


def damaged(data: bytes, damages: list[tuple[str, float, int]]) -> bytes:
    page = int.from_bytes(data[16:18], "big") or 65536
    out = bytearray(data)
    for how, where, seed in damages:
        rng = random.Random(seed)
        if len(out) < page:  # cut before an earlier damage
            break
        at = min(int(where * (len(out) // page)), len(out) // page - 1) * page
        if how == "zero":
            out[at : at + page] = bytes(page)
        elif how == "random":
            out[at : at + page] = rng.randbytes(page)
        elif how == "flip":
            for _ in range(8):
                out[at + rng.randrange(page)] ^= 1 << rng.randrange(8)
        else:
            del out[max(at, 100) :]
    return bytes(out)


@FUZZ
@given(damage(), st.sampled_from([None, 200]))
def test_damaged_pages_give_a_result_or_one_trace_error(tmp_path_factory, case, chunk_ops):
    name, damages = case
    path = tmp_path_factory.mktemp("damaged") / f"{name}.sqlite"
    path.write_bytes(damaged(original(name), damages))
    load_or_refuse(path, chunk_ops=chunk_ops)


@st.composite
def drift(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A fixture and one to three SQL statements that change its schema or values the way other exports differ."""
    name = draw(st.sampled_from(SMALL_FIXTURES))
    statements = []
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from(sorted(READ_COLUMNS)))
        column = draw(st.sampled_from(READ_COLUMNS[table]))
        how = draw(st.sampled_from(("rename", "drop", "value", "swap", "drop table")))
        if how == "rename":
            statements.append(f'ALTER TABLE "{table}" RENAME COLUMN "{column}" TO "{column}_renamed"')
        elif how == "drop":
            statements.append(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
        elif how == "value":
            every = draw(st.sampled_from((1, 2, 7)))
            value = draw(st.sampled_from(VALUES))
            statements.append(f'UPDATE "{table}" SET "{column}" = {value} WHERE rowid % {every} = 0')
        elif how == "swap" and "end" in READ_COLUMNS[table]:
            statements.append(f'UPDATE "{table}" SET "start" = "end", "end" = "start" WHERE rowid % 3 = 0')
        else:
            statements.append(f'DROP TABLE "{table}"')
    return name, statements


def drifted(path: Path, statements: list[str]) -> None:
    """Apply the statements that SQLite accepts (dropping an indexed column, say, it refuses)."""
    db = sqlite3.connect(path)
    for sql in statements:
        with contextlib.suppress(sqlite3.Error):
            db.execute(sql)
    db.commit()
    db.close()


@FUZZ
@given(drift(), st.sampled_from([None, 200]))
def test_schema_drift_gives_a_result_or_one_trace_error(tmp_path_factory, case, chunk_ops):
    name, statements = case
    path = tmp_path_factory.mktemp("drift") / f"{name}.sqlite"
    path.write_bytes(original(name))
    drifted(path, statements)
    load_or_refuse(path, chunk_ops=chunk_ops)
