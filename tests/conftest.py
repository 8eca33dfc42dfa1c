"""Shared fixtures: the recorded real traces, the CSVs nsys produced for them, and a factory of
small synthetic exports for edge cases.

Real traces (``tests/fixtures/traces/NAME.sqlite.xz``) are decompressed once per session into a
temporary directory; the committed files are never touched. ``make_trace`` writes a minimal
nsys-like SQLite export with sqlite-utils: only the tables and columns stagemfu reads.
"""

from __future__ import annotations

import atexit
import csv
import functools
import itertools
import lzma
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlite_utils

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "traces"
CORPUS = ROOT / "tests" / "fixtures" / "corpus"  # traces other people recorded (README there)
FAKE_NSYS = ROOT / "tests" / "fixtures" / "fake_nsys" / "nsys"  # writes a real fixture as its "recording"
TRACE_NAMES = ("tiny_vlm", "named_domain", "cuda_graph_node", "cuda_graph_graph", "tp_train", "llama_train")
# `stagemfu run` recordings of the built-in models (tests/fixtures/record_models.sh); the first is the
# embedded default trace, shipped in the package's data folder.
EMBEDDED_TRACE = ROOT / "src" / "stagemfu" / "data" / "deepseek_ocr2_base.sqlite.xz"
MODEL_TRACE_NAMES = (
    "deepseek_ocr2_base",
    "deepseek_ocr2_gundam",
    "deepseek_ocr_base",
    "deepseek_ocr_gundam",
    "llama_3_2_1b",
)
ALL_TRACE_NAMES = TRACE_NAMES + MODEL_TRACE_NAMES
STATS_REPORTS = (
    "nvtx_gpu_proj_sum",
    "nvtx_gpu_proj_trace",
    "nvtx_kern_sum",
    "nvtx_sum",
    "cuda_gpu_kern_sum",
    "cuda_gpu_mem_time_sum",
)

TID_BITS = 24
DEFAULT_PID = 100
DEFAULT_TID = 100

# nsys event types (ENUM_NSYS_EVENT_TYPE)
NVTX_MARK = 34
NVTX_PUSHPOP = 59
NVTX_STARTEND = 60
NVTX_DOMAIN_CREATE = 75


@functools.cache
def corpus_dir() -> Path:
    """The corpus of other people's traces under their upstream names, as a user would have them.

    ``tests/fixtures/corpus/`` holds them compressed (see its README): each ``.xz`` copy is
    decompressed, and every other file copied, once per test run into a temporary directory that
    is removed at exit, so a test can hand stagemfu the plain file and check that it never changes.
    """
    out = Path(tempfile.mkdtemp(prefix="stagemfu-corpus-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for source in sorted(CORPUS.iterdir()):
        if source.name == "README.md":
            continue
        target = out / source.name.removesuffix(".xz")
        with (lzma.open if source.suffix == ".xz" else open)(source, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def gtid(pid: int = DEFAULT_PID, tid: int = DEFAULT_TID) -> int:
    """nsys globalTid: process id in bits 24-47, thread id in bits 0-23."""
    return (pid << TID_BITS) | tid


def gpid(pid: int = DEFAULT_PID) -> int:
    """nsys globalPid: the globalTid of a process with the thread bits cleared."""
    return pid << TID_BITS


# --------------------------------------------------------------------------------------------
# Session-wide isolation: no user cache, no nsys.


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterable[None]:
    """Keep stagemfu's export cache inside the test session and hide any nsys install.

    With NSYS set to a path that does not exist, ``find_nsys`` answers "not found" without
    looking at PATH or /opt, so .nsys-rep inputs fail the same way on every machine.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        mp.setenv("NSYS", str(tmp_path_factory.mktemp("no-nsys") / "nsys"))
        yield


# --------------------------------------------------------------------------------------------
# Real traces and their nsys stats CSVs.


def fixture_trace(name: str) -> Path:
    """The compressed export of a recorded fixture (the embedded trace lives in the package)."""
    return EMBEDDED_TRACE if EMBEDDED_TRACE.name.startswith(f"{name}.") else FIXTURES / f"{name}.sqlite.xz"


@pytest.fixture(scope="session")
def trace_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each recorded fixture decompressed once: name -> path of the .sqlite file."""
    out = tmp_path_factory.mktemp("fixture-traces")
    paths = {}
    for name in ALL_TRACE_NAMES:
        target = out / f"{name}.sqlite"
        with lzma.open(fixture_trace(name), "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        paths[name] = target
    return paths


@pytest.fixture(scope="session")
def nsys_stats() -> dict[str, dict[str, pl.DataFrame]]:
    """The ``nsys stats`` CSVs of each fixture: name -> report -> frame."""
    return {
        name: {report: read_nsys_csv(FIXTURES / f"{name}.stats" / f"{report}.csv") for report in STATS_REPORTS}
        for name in ALL_TRACE_NAMES
    }


@pytest.fixture(scope="session")
def loaded(trace_paths: dict[str, Path]) -> dict[str, Any]:
    """``postprocess.load`` of each fixture, computed once: name -> StageTimes."""
    from stagemfu import postprocess

    return {name: postprocess.load(path) for name, path in trace_paths.items()}


def read_nsys_csv(path: Path) -> pl.DataFrame:
    """Read an ``nsys stats --format csv`` file into a frame.

    nsys (2025.3) quotes a field only when it holds a comma: a range name with a newline or a
    double quote is written raw, so one record can span several physical lines. The range-name
    column ("NVTX Range", "Range" or "Name") is the only one that can hold a newline: when it is
    the first column, a short record is the start of the next one; when it is the last column,
    a short record is the rest of the previous one. Numeric columns become Int64 (or Float64);
    an empty cell in a numeric column is null, in a text column "".
    """
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return pl.DataFrame()
    records = list(csv.reader(text.splitlines(), strict=False))
    header, body = records[0], records[1:]
    width = len(header)
    name_col = next(header.index(c) for c in ("NVTX Range", "Range", "Name", "Operation") if c in header)
    rows: list[list[str]] = []
    for record in body:
        if name_col == 0 and rows and len(rows[-1]) < width or name_col == width - 1 and rows and len(record) < width:
            prev = rows.pop()
            record = prev[:-1] + [prev[-1] + "\n" + record[0]] + record[1:]
        rows.append(record)
    for row in rows:
        assert len(row) == width, f"{path}: cannot rebuild a record: {row[:3]}"
    columns = {col: _typed_column([r[j] for r in rows]) for j, col in enumerate(header)}
    return pl.DataFrame(columns)


def _typed_column(values: list[str]) -> pl.Series:
    present = [v for v in values if v != ""]
    for parse, dtype in ((int, pl.Int64), (float, pl.Float64)):
        try:
            parsed = [parse(v) for v in present]
        except ValueError:
            continue
        it = iter(parsed)
        return pl.Series([next(it) if v != "" else None for v in values], dtype=dtype)
    return pl.Series(values, dtype=pl.Utf8)


# --------------------------------------------------------------------------------------------
# Synthetic exports.


def _rows(items: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [dict(item) for item in (items or [])]


def _thread(row: dict[str, Any], key: str = "globalTid") -> None:
    pid = row.pop("pid", DEFAULT_PID)
    tid = row.pop("tid", DEFAULT_TID)
    row.setdefault(key, gtid(pid, tid))


_counter = itertools.count()


def make_trace(
    directory: Path,
    *,
    ranges: Iterable[Mapping[str, Any]] = (),
    kernels: Iterable[Mapping[str, Any]] = (),
    calls: Iterable[Mapping[str, Any]] = (),
    memcpys: Iterable[Mapping[str, Any]] | None = None,
    memsets: Iterable[Mapping[str, Any]] | None = None,
    graphs: Iterable[Mapping[str, Any]] | None = None,
    strings: Mapping[int, str] | None = None,
    gpus: Iterable[Mapping[str, Any]] | None = None,
    omit: Iterable[str] = (),
    name: str | None = None,
) -> Path:
    """Write a minimal nsys-like SQLite export and return its path.

    Parameters
    ----------
    directory
        Where to write; the file name is unique unless ``name`` is given.
    ranges
        NVTX_EVENTS rows: ``start``, ``end`` (None for never ended), optional ``text``,
        ``textId``, ``domainId`` (0), ``eventType`` (59, push/pop), ``pid``/``tid`` or
        ``globalTid``, ``endGlobalTid``. Rows keep their order, so the n-th row has rowid n.
    kernels
        CUPTI_ACTIVITY_KIND_KERNEL rows: ``start``, ``end``, ``correlationId``, optional
        ``deviceId`` (0), ``streamId`` (7), ``pid`` or ``globalPid``, ``name`` (a string,
        interned into StringIds as ``demangledName``).
    calls
        CUPTI_ACTIVITY_KIND_RUNTIME rows: ``start``, ``end``, ``correlationId``, ``pid``/``tid``
        or ``globalTid``.
    memcpys, memsets, graphs
        Rows of CUPTI_ACTIVITY_KIND_MEMCPY (``copyKind`` 1 by default), _MEMSET and _GRAPH_TRACE
        (``graphId``), like kernels; None leaves the table out.
    strings
        Extra StringIds rows (id -> value), for ``textId``.
    gpus
        TARGET_INFO_GPU rows (``id``, ``name``, ``smCount``, ``clockRate``); None leaves it out.
    omit
        Tables not to create at all (e.g. "NVTX_EVENTS", "StringIds").
    """
    omit = set(omit)
    path = Path(directory) / (name or f"trace-{next(_counter)}.sqlite")
    db = sqlite_utils.Database(path)
    string_ids: dict[str, int] = {}
    extra = dict(strings or {})

    def intern(value: str) -> int:
        if value not in string_ids:
            string_ids[value] = max([*extra, *string_ids.values(), 0]) + 1
        return string_ids[value]

    nvtx = []
    for row in _rows(ranges):
        _thread(row)
        row.setdefault("eventType", NVTX_PUSHPOP)
        row.setdefault("domainId", 0)
        for col in ("text", "textId", "endGlobalTid", "end"):
            row.setdefault(col, None)
        nvtx.append(row)

    def ops(items: Iterable[Mapping[str, Any]] | None, default_name: str | None) -> list[dict[str, Any]]:
        out = []
        for row in _rows(items):
            pid = row.pop("pid", DEFAULT_PID)
            row.setdefault("globalPid", gpid(pid))
            row.setdefault("deviceId", 0)
            row.setdefault("streamId", 7)
            if default_name is not None:
                row["demangledName"] = intern(row.pop("name", default_name))
            out.append(row)
        return out

    kernel_rows = ops(kernels, "kernel")
    memcpy_rows = ops(memcpys, None)
    for row in memcpy_rows:
        row.setdefault("copyKind", 1)
    memset_rows = ops(memsets, None)
    graph_rows = ops(graphs, None)
    for row in graph_rows:
        row.setdefault("graphId", 1)
    runtime = []
    for row in _rows(calls):
        _thread(row)
        runtime.append(row)

    nvtx_cols = {
        "start": int,
        "end": int,
        "eventType": int,
        "text": str,
        "textId": int,
        "domainId": int,
        "globalTid": int,
        "endGlobalTid": int,
    }
    op_cols = {"start": int, "end": int, "deviceId": int, "streamId": int, "correlationId": int, "globalPid": int}
    tables: dict[str, tuple[dict[str, type], list[dict[str, Any]]]] = {
        "NVTX_EVENTS": (nvtx_cols, nvtx),
        "CUPTI_ACTIVITY_KIND_RUNTIME": ({"start": int, "end": int, "globalTid": int, "correlationId": int}, runtime),
        "CUPTI_ACTIVITY_KIND_KERNEL": ({**op_cols, "demangledName": int}, kernel_rows),
    }
    if memcpys is not None:
        tables["CUPTI_ACTIVITY_KIND_MEMCPY"] = ({**op_cols, "copyKind": int}, memcpy_rows)
    if memsets is not None:
        tables["CUPTI_ACTIVITY_KIND_MEMSET"] = (op_cols, memset_rows)
    if graphs is not None:
        tables["CUPTI_ACTIVITY_KIND_GRAPH_TRACE"] = ({**op_cols, "graphId": int}, graph_rows)
    if gpus is not None:
        tables["TARGET_INFO_GPU"] = ({"id": int, "name": str, "smCount": int, "clockRate": int}, _rows(gpus))
    for table, (columns, rows) in tables.items():
        if table in omit:
            continue
        db[table].create(columns)
        if rows:
            db[table].insert_all(rows)
    if "StringIds" not in omit:
        db["StringIds"].create({"id": int, "value": str}, pk="id")
        all_strings = {**extra, **{v: k for k, v in string_ids.items()}}
        if all_strings:
            db["StringIds"].insert_all([{"id": k, "value": v} for k, v in sorted(all_strings.items())])
    db.close()
    return path


@pytest.fixture(name="make_trace", scope="session")
def make_trace_fixture() -> Any:
    """The :func:`make_trace` factory (session scoped: it holds no state, so property tests can use it)."""
    return make_trace


def launch(
    corr: int,
    call: tuple[int, int],
    gpu: tuple[int, int],
    *,
    pid: int = DEFAULT_PID,
    tid: int = DEFAULT_TID,
    name: str = "kernel",
    stream: int = 7,
    device: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One runtime call and the kernel it launched: ``(call_row, kernel_row)``."""
    return (
        {"start": call[0], "end": call[1], "correlationId": corr, "pid": pid, "tid": tid},
        {
            "start": gpu[0],
            "end": gpu[1],
            "correlationId": corr,
            "pid": pid,
            "name": name,
            "streamId": stream,
            "deviceId": device,
        },
    )


# --------------------------------------------------------------------------------------------
# Report fixtures shared by the report test modules.


@pytest.fixture
def toy(make_trace, tmp_path: Path) -> Path:
    """A small generation trace (``report_traces.generation_trace``) in the test's directory."""
    from report_traces import generation_trace

    return generation_trace(make_trace, tmp_path)


@pytest.fixture
def analysis(tmp_path: Path) -> Path:
    """``report_traces.ANALYSIS`` written as ``analysis.json``."""
    from report_traces import ANALYSIS, write_json

    return write_json(tmp_path / "analysis.json", ANALYSIS)
