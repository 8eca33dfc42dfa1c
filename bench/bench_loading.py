#!/usr/bin/env python3
"""Compare ways of loading the two bulk reads of `stagemfu postprocess` from an nsys export.

    bench/bench_loading.py TRACE.sqlite [--threads 1,4,8,16] [--report REPORT.nsys-rep] [--out FILE]

The two reads that dominate loading a large export are the GPU operations (kernel table: start,
end, device, stream, correlation id, process, name) and the CUDA API calls of launching functions
(runtime table, the largest table of an export: start, end, thread, correlation id). Each is
timed, in this process, through:

  * sqlite-scan   SQLite itself, no rows handed out (`SELECT count(*), sum(...)` per rowid slice,
                  one connection per thread): the floor any SQLite-based reader stands on;
  * sqlite3       the standard library's cursor into polars (one thread: rows are Python tuples);
  * adbc          the ADBC SQLite driver into Arrow, one connection per thread (what stagemfu uses);
  * connectorx    connectorx into Arrow, one query per thread (its own Rust threads), when installed.

With --report, the same report is exported with `nsys export --type sqlite` and `--type
parquetdir`, each timed, and the parquet files holding the same columns are read with polars: the
path a user who passes an .nsys-rep would take either way. Every method must return the same row
count, which the script checks. Results go to --out as JSON and are printed as a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from stagemfu.collect.nsys import find_nsys  # noqa: E402
from stagemfu.postprocess.nsys import sqlite, tables  # noqa: E402

KERNEL_COLUMNS = ["start", "end", "deviceId", "streamId", "correlationId", "globalPid", "demangledName"]
CALL_COLUMNS = ["start", "end", "globalTid", "correlationId"]


def reads(db: sqlite3.Connection) -> dict[str, tuple[str, list[str], str]]:
    """The two bulk reads: name -> (table, columns, WHERE condition)."""
    launchers = ", ".join(str(r[0]) for r in db.execute(tables.LAUNCHER_NAMES_SQL))
    return {
        "kernels": (tables.KERNEL_TABLE, KERNEL_COLUMNS, "1"),
        "launching calls": (tables.RUNTIME_TABLE, CALL_COLUMNS, f"nameId IN ({launchers})"),
    }


def slices(db: sqlite3.Connection, table: str, parts: int) -> list[str]:
    lo = db.execute(f"SELECT MIN(rowid) FROM {table}").fetchone()[0]
    hi = db.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()[0]
    edges = np.linspace(lo, hi + 1, parts + 1).astype(np.int64)
    return [f"rowid >= {a} AND rowid < {b}" for a, b in zip(edges[:-1], edges[1:])]


def queries(db: sqlite3.Connection, table: str, columns: list[str], where: str, parts: int) -> list[str]:
    cols = ", ".join(f'"{c}"' for c in columns)
    return [f"SELECT {cols} FROM {table} WHERE {piece} AND ({where})" for piece in slices(db, table, parts)]


def sqlite_scan(path: Path, sqls: list[str]) -> int:
    """Rows SQLite visits for these queries, summed in SQL: nothing leaves the library."""

    def one(sql: str) -> int:
        head, tail = sql.split(" FROM ", 1)
        every = ", ".join(f"max({c})" for c in head.removeprefix("SELECT ").split(", "))  # decode every column
        with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as db:
            return db.execute(f"SELECT count(*), {every} FROM {tail}").fetchone()[0]

    with ThreadPoolExecutor(len(sqls)) as pool:
        return sum(pool.map(one, sqls))


def sqlite3_cursor(path: Path, sqls: list[str]) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as db:
        frames = [pl.DataFrame(db.execute(sql).fetchall(), orient="row") for sql in sqls]
    return sum(f.height for f in frames)


def adbc(path: Path, sqls: list[str]) -> int:
    uri = sqlite.uri(path)

    def one(sql: str) -> pl.DataFrame:
        return sqlite.query(uri, path, sql)

    with ThreadPoolExecutor(len(sqls)) as pool:
        frames = list(pool.map(one, sqls))
    return pl.concat(frames).height


def connectorx(path: Path, sqls: list[str]) -> int:
    import connectorx as cx

    table = cx.read_sql(f"sqlite://{path}", sqls if len(sqls) > 1 else sqls[0], return_type="arrow")
    return pl.from_arrow(table).height


METHODS: dict[str, Callable[[Path, list[str]], int]] = {
    "sqlite-scan": sqlite_scan,
    "sqlite3": sqlite3_cursor,
    "adbc": adbc,
    "connectorx": connectorx,
}


def clock(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def bench_sqlite(path: Path, threads: list[int]) -> list[dict]:
    rows = []
    with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as db:
        plan = reads(db)
        for read, (table, columns, where) in plan.items():
            for method, fn in METHODS.items():
                if method == "connectorx" and importlib.util.find_spec("connectorx") is None:
                    continue
                for n in [1] if method == "sqlite3" else threads:
                    sqls = queries(db, table, columns, where, n)
                    seconds, count = clock(lambda fn=fn, sqls=sqls: fn(path, sqls))
                    rows.append({"read": read, "method": method, "threads": n, "rows": count, "seconds": seconds})
                    print(f"{read:16} {method:12} {n:3} threads {count:>12,} rows {seconds:8.2f} s", flush=True)
    for read in plan:
        counts = {r["rows"] for r in rows if r["read"] == read}
        if len(counts) != 1:
            raise SystemExit(f"{read}: methods disagree on the row count: {sorted(counts)}")
    return rows


def bench_report(report: Path, nsys: str, threads: int) -> list[dict]:
    """Export one report both ways and read the bulk columns of each."""
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-loading-"))
    try:
        sqlite_out = work / "report.sqlite"
        seconds, _ = clock(
            lambda: subprocess.run(
                [
                    nsys,
                    "export",
                    "--type",
                    "sqlite",
                    "--output",
                    str(sqlite_out),
                    "--force-overwrite",
                    "true",
                    str(report),
                ],
                check=True,
                capture_output=True,
            )
        )
        rows.append({"read": "export", "method": "nsys export --type sqlite", "seconds": seconds})
        parquet_out = work / "report_pq"
        seconds, done = clock(
            lambda: subprocess.run(
                [
                    nsys,
                    "export",
                    "--type",
                    "parquetdir",
                    "--output",
                    str(parquet_out),
                    "--force-overwrite",
                    "true",
                    str(report),
                ],
                capture_output=True,
                text=True,
            )
        )
        if done.returncode != 0:
            rows.append({"read": "export", "method": "nsys export --type parquetdir", "error": done.stderr[-400:]})
        else:
            rows.append({"read": "export", "method": "nsys export --type parquetdir", "seconds": seconds})
            with sqlite3.connect(f"file:{sqlite_out}?mode=ro&immutable=1", uri=True) as db:
                plan = reads(db)
                launchers = [r[0] for r in db.execute(tables.LAUNCHER_NAMES_SQL)]
            for read, (table, columns, _) in plan.items():
                files = sorted(parquet_out.rglob(f"{table}*.parquet")) or sorted(
                    (parquet_out / table).rglob("*.parquet")
                )
                frame = pl.scan_parquet(files).select(columns + (["nameId"] if read != "kernels" else []))
                if read != "kernels":
                    frame = frame.filter(pl.col("nameId").is_in(launchers))
                seconds, height = clock(lambda frame=frame: frame.collect().height)
                rows.append(
                    {
                        "read": read,
                        "method": "polars read_parquet",
                        "threads": threads,
                        "rows": height,
                        "seconds": seconds,
                    }
                )
            rows.append(
                {
                    "read": "files",
                    "method": "parquetdir listing",
                    "files": sorted(p.name for p in parquet_out.rglob("*"))[:60],
                }
            )
        for r in rows:
            print(r, flush=True)
        return rows + [{"read": "sqlite file", "bytes": sqlite_out.stat().st_size}]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", type=Path, help="an nsys SQLite export (e.g. an inflated fixture)")
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}", help="thread counts to try (default: %(default)s)")
    ap.add_argument("--report", type=Path, help="an .nsys-rep to export as sqlite and parquetdir")
    ap.add_argument("--nsys", help="nsys executable (default: found as stagemfu finds it)")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "trace": str(args.trace),
        "sqlite": bench_sqlite(args.trace.resolve(), threads),
    }
    if args.report:
        result["report"] = bench_report(args.report.resolve(), args.nsys or str(find_nsys(None)), max(threads))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
