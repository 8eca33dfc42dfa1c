#!/usr/bin/env python3
"""Benchmark `stagemfu postprocess` on real traces inflated to millions of kernels.

    bench/bench_postprocess.py --copies 70,700,3500 [--ranks 8] [--base TRACE] [--nsys PATH] [--out DIR]

For each copy count N the base fixture (a real H100 trace, 3,003 kernels) is repeated N times with
bench/inflate_trace.py. Then, each in a fresh process, timed with its peak RSS:
  * `stagemfu postprocess FILE --format json` (default --chunk-ops auto: time-ordered chunks
    above 2M operations, several read and attributed at once where there are cores);
  * the same with --chunk-ops 0 (everything in memory), up to --in-memory-max kernels;
  * `nsys stats -r nvtx_gpu_proj_sum` on the same file, when nsys is found.
The benchmark checks itself: every per-range total on the inflated file must be exactly N times
the total on the base file (both paths), and equal to nsys's projected time where nsys ran.

With --ranks R, R names of one inflated trace (the smallest N) make a directory of "rank" traces:
`stagemfu postprocess DIR` is timed one trace after the other (--jobs 1) and on a local Dask cluster
(--jobs R), and the two JSON documents must be equal.

Runs accumulate in DIR/results.json (a run of the same N replaces the earlier one), so a long
benchmark can be split into several invocations; every invocation rewrites DIR/results.md: the
runs, the growth table (time ratio against size ratio) and the many-trace run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from inflate_trace import inflate_trace  # noqa: E402  (beside this script)

from stagemfu import postprocess  # noqa: E402
from stagemfu.collect.nsys import find_nsys  # noqa: E402
from stagemfu.postprocess.export import decompress_cached  # noqa: E402

STAGEMFU = [sys.executable, "-m", "stagemfu.cli"]
# Child processes import stagemfu from this checkout too, installed or not.
CHILD_PATH = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(CHILD_PATH)}
CHECKED = ["instances", "gpu_instances", "span_ns", "busy_ns", "kernel_ns", "gpu_ops", "kernels"]


def timed(cmd: list[str], *, timeout: float) -> dict:
    """Run a command in a fresh process; wall seconds, peak RSS (MiB) and exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return {"seconds": None, "timed_out": timeout, "rss_mib": usage.ru_maxrss / 1024}
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return {
        "seconds": seconds,
        "rss_mib": usage.ru_maxrss / 1024,
        "status": os.waitstatus_to_exitcode(status),
        "stderr_tail": err[-300:],
    }


def machine() -> dict:
    import polars

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "polars": polars.__version__}


def phases(trace: Path) -> dict[str, float]:
    """Seconds spent reading the export and computing stage times, in a fresh process."""
    code = (
        "import json, time, sys; from stagemfu.postprocess import read, stage_times; t0 = time.perf_counter(); "
        "tr = read(sys.argv[1]); t1 = time.perf_counter(); stage_times(tr); t2 = time.perf_counter(); "
        "print(json.dumps({'read_s': t1 - t0, 'compute_s': t2 - t1}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(trace)], capture_output=True, text=True, check=True, env=CHILD_ENV
    )
    return json.loads(out.stdout)


def totals_by_range(path: Path) -> dict[str, dict[str, int]]:
    st = postprocess.load(path)
    return {f"{r['domain']}:{r['name']}": {c: r[c] for c in CHECKED} for r in st.ranges.iter_rows(named=True)}


def nsys_proj(nsys: str, trace: Path, workdir: Path, timeout: float) -> tuple[dict, dict[str, int] | None]:
    prefix = workdir / f"{trace.stem}-nsys"
    cmd = [
        nsys,
        "stats",
        "--force-export=false",
        "--format",
        "csv",
        "-r",
        "nvtx_gpu_proj_sum",
        "-o",
        str(prefix),
        str(trace),
    ]
    run = timed(cmd, timeout=timeout)
    csv_path = Path(f"{prefix}_nvtx_gpu_proj_sum.csv")
    if run.get("seconds") is None or not csv_path.is_file():
        return run, None
    import polars as pl

    frame = pl.read_csv(csv_path)
    return run, dict(zip(frame["Range"], frame["Total Proj Time (ns)"]))


def run_one(copies: int, args: argparse.Namespace, ctx: dict) -> dict:
    """Inflate the base trace ``copies`` times, time stagemfu (and nsys) on it, check the numbers."""
    trace = ctx["work"] / f"inflated-x{copies}.sqlite"
    if not trace.exists():
        inflate_trace(ctx["base"], trace, copies)
    run = {"copies": copies, "kernels": ctx["base_kernels"] * copies, "file_mib": trace.stat().st_size / 2**20}
    want = {k: {c: v * copies for c, v in vals.items()} for k, vals in ctx["base_totals"].items()}
    in_memory = run["kernels"] <= args.in_memory_max
    for key, extra in (("stagemfu", []), ("stagemfu_in_memory", ["--chunk-ops", "0"])):
        if key == "stagemfu_in_memory" and not in_memory:
            continue
        out_json = args.out / f"postprocess-x{copies}.json"
        cmd = [*STAGEMFU, "postprocess", str(trace), "--quiet", *extra, "--format", "json", "-o", str(out_json)]
        run[key] = timed(cmd, timeout=args.timeout)
        if not out_json.is_file():
            continue
        doc = json.loads(out_json.read_text())
        got = {f"{r['domain']}:{r['name']}": {c: r[c] for c in CHECKED} for r in doc["ranges"]}
        run[key]["scaled_exactly"] = got == want
        run[key]["notes"] = doc["notes"]
        out_json.unlink()
    run["scaled_exactly"] = all(run[k].get("scaled_exactly") for k in ("stagemfu", "stagemfu_in_memory") if k in run)
    if args.phases and in_memory:
        run["phases"] = phases(trace)
    if ctx["nsys"]:
        run["nsys_stats"], proj = nsys_proj(ctx["nsys"], trace, ctx["work"], args.timeout)
        if proj is not None:
            run["span_equals_nsys"] = all(proj.get(k) == v["span_ns"] for k, v in got.items() if v["gpu_instances"])
    if not args.keep:
        trace.unlink()
    return run


def run_ranks(ranks: int, copies: int, args: argparse.Namespace, ctx: dict) -> dict:
    """Time `stagemfu postprocess DIR` on ``ranks`` names of one inflated trace, sequential and on Dask."""
    trace = ctx["work"] / f"inflated-x{copies}.sqlite"
    if not trace.exists():
        inflate_trace(ctx["base"], trace, copies)
    ranks_dir = ctx["work"] / "ranks"
    shutil.rmtree(ranks_dir, ignore_errors=True)
    ranks_dir.mkdir()
    for r in range(ranks):
        (ranks_dir / f"rank{r:04d}.sqlite").symlink_to(trace.resolve())  # a relative target would resolve from ranks/
    run = {"ranks": ranks, "copies": copies, "kernels_per_rank": ctx["base_kernels"] * copies}
    docs = {}
    for jobs in (1, ranks):
        out_json = args.out / f"ranks-jobs{jobs}.json"
        cmd = [*STAGEMFU, "postprocess", str(ranks_dir), "--quiet", "--jobs", str(jobs), "--format", "json"]
        run[f"jobs_{jobs}"] = timed([*cmd, "-o", str(out_json)], timeout=args.timeout)
        if out_json.is_file():  # not when Dask is missing (the stderr tail says so) or the run timed out
            docs[jobs] = json.loads(out_json.read_text())
            out_json.unlink()
    run["dask_equals_sequential"] = len(docs) == 2 and docs[1] == docs[ranks]
    shutil.rmtree(ranks_dir)
    if not args.keep:
        trace.unlink()
    return run


def growth_rows(runs: list[dict]) -> list[dict]:
    """Time and size of every run against the smallest, for the default and the in-memory path:
    linear growth keeps time ratio <= 1.2 x size ratio."""
    rows = []
    for key in ("stagemfu", "stagemfu_in_memory"):
        timed_runs = sorted((r for r in runs if (r.get(key) or {}).get("seconds")), key=lambda r: r["kernels"])
        for r in timed_runs[1:]:
            first = timed_runs[0]
            size = r["kernels"] / first["kernels"]
            time_ratio = r[key]["seconds"] / first[key]["seconds"]
            rows.append({"path": key, "from": first["kernels"], "to": r["kernels"], "size_ratio": size})
            rows[-1]["time_ratio"] = time_ratio
    return rows


def speedup(nsys: dict, ours: dict) -> str:
    return f"{nsys['seconds'] / ours['seconds']:.1f}x" if nsys.get("seconds") and ours.get("seconds") else "-"


def markdown(results: dict) -> str:
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else "-"  # noqa: E731
    out = [
        f"machine: {results['machine']}; nsys: {results['nsys']}",
        "",
        "| kernels | file MiB | stagemfu s | RSS MiB | chunks | in-memory s | in-memory RSS MiB | read s | compute s "
        "| nsys stats s | nsys RSS MiB | speed-up | speed-up in-memory | exact (xN, = nsys) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(results["runs"], key=lambda r: r["kernels"]):
        s, m = r["stagemfu"], r.get("stagemfu_in_memory") or {}
        n, p = r.get("nsys_stats") or {}, r.get("phases") or {}
        chunks = next((note.split()[2] for note in s.get("notes", []) if note.startswith("read in ")), "1")
        nsys_ok = "" if "span_equals_nsys" not in r else f", {r['span_equals_nsys']}"
        rss = lambda t: f"{t['rss_mib']:.0f}" if t else "-"  # noqa: E731
        out.append(
            f"| {r['kernels']:,} | {r['file_mib']:.0f} | {fmt(s.get('seconds'))} | {rss(s)} | {chunks} | "
            f"{fmt(m.get('seconds'))} | {rss(m)} | {fmt(p.get('read_s'))} | {fmt(p.get('compute_s'))} | "
            f"{fmt(n.get('seconds'))} | {fmt(n.get('rss_mib'))} | {speedup(n, s)} | {speedup(n, m)} | "
            f"{r['scaled_exactly']}{nsys_ok} |"
        )
    growth = growth_rows(results["runs"])
    if growth:
        out += [
            "",
            "| run | kernels | vs kernels | size ratio | time ratio | time / size |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {'default' if g['path'] == 'stagemfu' else 'in memory'} | {g['to']:,} | {g['from']:,} | "
            f"{g['size_ratio']:.0f} | {g['time_ratio']:.2f} | {g['time_ratio'] / g['size_ratio']:.3f} |"
            for g in growth
        ]
    many = results.get("ranks")
    if many:
        one, par = many["jobs_1"], many[f"jobs_{many['ranks']}"]
        out += [
            "",
            "| rank traces | kernels each | --jobs 1 s | --jobs R s | speed-up | Dask = sequential |",
            "|---:|---:|---:|---:|---:|---|",
            f"| {many['ranks']} | {many['kernels_per_rank']:,} | {fmt(one.get('seconds'))} | "
            f"{fmt(par.get('seconds'))} | {one['seconds'] / par['seconds']:.1f}x | {many['dask_equals_sequential']} |"
            if one.get("seconds") and par.get("seconds") and many["dask_equals_sequential"]
            else f"| {many['ranks']} | - | - | - | - | failed: {par.get('stderr_tail', 'timed out')[-80:]!r} |",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", default="70,700,3500", help="comma-separated copy counts (default %(default)s)")
    ap.add_argument("--ranks", type=int, default=0, help="also time R rank traces (see --rank-copies)")
    ap.add_argument("--rank-copies", type=int, default=None, help="copies per rank trace (default: smallest --copies)")
    ap.add_argument("--base", type=Path, default=ROOT / "tests/fixtures/traces/tiny_vlm.sqlite.xz")
    ap.add_argument("--nsys", default=None, help="nsys executable (default: $NSYS, PATH, /opt/nvidia)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--workdir", type=Path, default=None, help="where inflated traces go (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per command")
    ap.add_argument("--no-phases", dest="phases", action="store_false", help="skip the read/compute phase timing")
    ap.add_argument(
        "--in-memory-max",
        type=int,
        default=20_000_000,
        help="largest kernel count also run with --chunk-ops 0 (default %(default)s)",
    )
    ap.add_argument("--no-nsys", action="store_true", help="do not run nsys stats (e.g. on a 50M-kernel trace)")
    ap.add_argument(
        "--inflate-only", action="store_true", help="only make the inflated traces in --workdir (implies --keep)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the inflated traces in --workdir for a later run")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="stagemfu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base = decompress_cached(args.base) if args.base.suffix == ".xz" else args.base
    nsys = None if args.no_nsys else args.nsys or find_nsys()
    ctx = {
        "work": work,
        "base": base,
        "base_totals": totals_by_range(base),
        "base_kernels": int(postprocess.read(base).ops.held.filter(kind="kernel").height),
        "nsys": nsys,
    }
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": []}
    results.update(machine=machine(), base=str(args.base), base_kernels=ctx["base_kernels"])
    if nsys:
        results["nsys"] = subprocess.run([nsys, "--version"], capture_output=True, text=True).stdout.strip()
    results.setdefault("nsys", None)
    copies = [int(c) for c in args.copies.split(",") if c]
    if args.inflate_only:
        for n in copies:
            target = work / f"inflated-x{n}.sqlite"
            if not target.exists():
                inflate_trace(base, target, n)
            print(f"{target}: {target.stat().st_size / 2**20:.0f} MiB", flush=True)
        return
    for n in copies:
        run = run_one(n, args, ctx)
        results["runs"] = [r for r in results["runs"] if r["copies"] != n] + [run]
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps(run), flush=True)
    if args.ranks:
        results["ranks"] = run_ranks(args.ranks, args.rank_copies or min(copies or [70]), args, ctx)
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["ranks"]), flush=True)
    text = markdown(results)
    (args.out / "results.md").write_text(text)
    print("\n" + text)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
