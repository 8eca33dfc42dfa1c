#!/usr/bin/env python3
"""Benchmark `stagemfu postprocess` on real traces inflated to millions of kernels.

    bench/bench_postprocess.py --copies 700,3500 [--base TRACE] [--nsys PATH] [--out DIR]

For each copy count N the base fixture (a real H100 trace, 3,003 kernels) is repeated N times with
../shared/bench/inflate_trace.py. Then, each in a fresh process, timed with its peak RSS:
  * `stagemfu postprocess FILE --format json`
  * `nsys stats -r nvtx_gpu_proj_sum` on the same file, when nsys is found.
The benchmark checks itself: every per-range total on the inflated file must be exactly N times
the total on the base file, and equal to nsys's projected time where nsys ran.
Results go to DIR/results.json and a Markdown table on stdout.
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

from stagemfu import postprocess  # noqa: E402
from stagemfu.postprocess.export import decompress_cached, find_nsys  # noqa: E402

INFLATE = ROOT.parent / "shared" / "bench" / "inflate_trace.py"
CHECKED = ["instances", "gpu_instances", "span_ns", "busy_ns", "kernel_ns", "gpu_ops", "kernels"]


def timed(cmd: list[str], *, timeout: float) -> dict:
    """Run a command in a fresh process; wall seconds, peak RSS (MiB) and exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    out = subprocess.run([sys.executable, "-c", code, str(trace)], capture_output=True, text=True, check=True)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", default="700,3500", help="comma-separated copy counts (default 700,3500)")
    ap.add_argument("--base", type=Path, default=ROOT / "tests/fixtures/traces/tiny_vlm.sqlite.xz")
    ap.add_argument("--nsys", default=None, help="nsys executable (default: $NSYS, PATH, /opt/nvidia)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--workdir", type=Path, default=None, help="where inflated traces go (default: a temp dir)")
    ap.add_argument("--inflate", type=Path, default=INFLATE, help="the inflate_trace.py script (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per command")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="stagemfu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base = decompress_cached(args.base) if args.base.suffix == ".xz" else args.base
    base_totals = totals_by_range(base)
    base_kernels = int(postprocess.read(base).ops.filter(kind="kernel").height)
    nsys = args.nsys or find_nsys()
    stagemfu_cmd = [sys.executable, "-m", "stagemfu.cli"]
    results = {"machine": machine(), "nsys": None, "base": str(args.base), "base_kernels": base_kernels, "runs": []}
    if nsys:
        results["nsys"] = subprocess.run([nsys, "--version"], capture_output=True, text=True).stdout.strip()

    for copies in [int(c) for c in args.copies.split(",")]:
        trace = work / f"inflated-x{copies}.sqlite"
        if not trace.exists():
            subprocess.run([sys.executable, str(args.inflate), str(base), str(trace), str(copies)], check=True)
        run = {"copies": copies, "kernels": base_kernels * copies, "file_mib": trace.stat().st_size / 2**20}
        out_json = args.out / f"postprocess-x{copies}.json"
        run["stagemfu"] = timed(
            [*stagemfu_cmd, "postprocess", str(trace), "--format", "json", "-o", str(out_json)], timeout=args.timeout
        )
        doc = json.loads(out_json.read_text())
        got = {f"{r['domain']}:{r['name']}": {c: r[c] for c in CHECKED} for r in doc["ranges"]}
        want = {k: {c: v * copies for c, v in vals.items()} for k, vals in base_totals.items()}
        run["scaled_exactly"] = got == want
        run["phases"] = phases(trace)
        if nsys:
            run["nsys_stats"], proj = nsys_proj(nsys, trace, work, args.timeout)
            if proj is not None:
                run["span_equals_nsys"] = all(proj.get(k) == v["span_ns"] for k, v in got.items() if v["gpu_instances"])
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        trace.unlink()

    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nmachine: {results['machine']}; nsys: {results['nsys']}")
    print("| kernels | file MiB | stagemfu s | stagemfu RSS MiB | nsys stats s | nsys RSS MiB | speed-up | exact |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results["runs"]:
        s, n = r["stagemfu"], r.get("nsys_stats") or {}
        ratio = f"{n['seconds'] / s['seconds']:.1f}x" if n.get("seconds") and s.get("seconds") else "-"
        fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else "-"  # noqa: E731
        print(
            f"| {r['kernels']:,} | {r['file_mib']:.0f} | {fmt(s.get('seconds'))} | {s['rss_mib']:.0f} | "
            f"{fmt(n.get('seconds'))} | {fmt(n.get('rss_mib'))} | {ratio} | "
            f"{r['scaled_exactly']}{'' if 'span_equals_nsys' not in r else ', nsys ' + str(r['span_equals_nsys'])} |"
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
