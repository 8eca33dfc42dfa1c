#!/usr/bin/env python3
"""Benchmark reading torch.profiler (Kineto) traces against HolisticTraceAnalysis, on inflated real traces.

    bench/bench_kineto.py --copies 20,100,340 [--base TRACE] [--hta PYTHON] [--hta-max-copies 100] [--out DIR]

For each copy count N the recorded Llama training trace (tests/fixtures/traces/llama_train.pt.trace.json.gz,
5.99 MB of JSON, 18,772 events) is repeated N times with bench/inflate_kineto.py into a plain .json
file. Then, each in a fresh process, timed with its peak RSS:
  * stagemfu's trace load: ``stagemfu.postprocess.read(FILE)`` (the reader: the file into the
    format-neutral trace);
  * the whole of ``stagemfu postprocess FILE --format json`` (load, stage times, JSON out);
  * HTA's trace load: ``TraceAnalysis(trace_dir=DIR)`` (HTA's default JSON parser), with the
    Python of a separate environment where HolisticTraceAnalysis is installed (--hta; by default
    .benchvenv/bin/python: ``python -m venv .benchvenv && .benchvenv/bin/pip install
    HolisticTraceAnalysis``), up to --hta-max-copies (HTA holds about six times the file in
    memory). HTA is no dependency of stagemfu.
The benchmark checks itself: every per-stage total on the inflated file must be exactly N times
the total on the base file.

Runs accumulate in DIR/kineto.json (a run of the same N replaces the earlier one); every invocation
rewrites DIR/kineto.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

from bench_postprocess import ROOT, machine, timed  # beside this script
from inflate_kineto import inflate_kineto

from stagemfu import postprocess

BASE = ROOT / "tests" / "fixtures" / "traces" / "llama_train.pt.trace.json.gz"
HTA_PYTHON = ROOT / ".benchvenv" / "bin" / "python"
CHECKED = ["instances", "span_ns", "busy_ns", "kernel_ns", "gpu_ops", "kernels"]
# Each child prints its own peak RSS (VmHWM) as it exits: the rusage of a child counts the memory
# of the parent it was forked from, which this script's own polars would inflate.
PEAK = (
    "import atexit, re, sys; atexit.register(lambda: print('peak_kib', re.search(r'VmHWM:\\s*(\\d+)', "
    "open('/proc/self/status').read()).group(1), file=sys.stderr)); "
)
READ = PEAK + "from stagemfu.postprocess import read; read(sys.argv[1])"
POSTPROCESS = PEAK + "from stagemfu.cli import main; sys.argv = ['stagemfu', 'postprocess', *sys.argv[1:]]; main()"
HTA_LOAD = PEAK + "from hta.trace_analysis import TraceAnalysis; TraceAnalysis(trace_dir=sys.argv[1])"


def totals(path: Path) -> dict[str, dict[str, int]]:
    """Per stage name, the sums the benchmark checks."""
    st = postprocess.load(path)
    return {row.pop("name"): row for row in st.ranges.select("name", *CHECKED).iter_rows(named=True)}


def run_one(copies: int, args: argparse.Namespace, base: dict) -> dict:
    """Inflate, then time our load, our postprocess and HTA's load on the same file."""
    folder = args.workdir / f"x{copies}"
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / "rank-0.pt.trace.json"
    if not trace.exists():
        inflate_kineto(args.base, trace, copies)
    ours = measured([sys.executable, "-c", READ, str(trace)], args.timeout)
    postprocess_json = [str(trace), "--format", "json", "-o", "/dev/null"]
    full = measured([sys.executable, "-c", POSTPROCESS, *postprocess_json], args.timeout)
    with_hta = args.hta.exists() and copies <= args.hta_max_copies
    hta = measured([str(args.hta), "-c", HTA_LOAD, str(folder)], args.timeout) if with_hta else {}
    got = totals(trace)
    exact = got == {name: {k: v * copies for k, v in row.items()} for name, row in base.items()}
    result = {
        "copies": copies,
        "file_mib": trace.stat().st_size / 2**20,
        "events": copies * args.base_events,
        "stagemfu_read": ours,
        "stagemfu_postprocess": full,
        "hta_load": hta,
        "exact": exact,
    }
    if not args.keep:
        shutil.rmtree(folder)
    return result


def measured(cmd: list[str], timeout: float) -> dict:
    """Wall seconds and the child's own peak RSS (MiB) of a command that prints ``peak_kib N`` last."""
    result = timed(cmd, timeout=timeout)
    peak = [line.split()[1] for line in result.get("stderr_tail", "").splitlines() if line.startswith("peak_kib ")]
    return {**result, "rss_mib": int(peak[-1]) / 1024 if peak else None}


def ratio(a: dict, b: dict, key: str) -> str:
    return f"{b[key] / a[key]:.1f}x" if a.get(key) and b.get(key) else "-"


def markdown(results: dict) -> str:
    lines = [
        f"machine: {results['machine']}",
        "",
        "| copies | file MiB | events | stagemfu read s | RSS MiB | postprocess s | RSS MiB | HTA load s | HTA RSS MiB "
        "| faster | RSS share | exact (xN) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(results["runs"].values(), key=lambda r: r["copies"]):
        o, p, h = r["stagemfu_read"], r["stagemfu_postprocess"], r["hta_load"]
        share = f"{o['rss_mib'] / h['rss_mib']:.2f}" if h.get("rss_mib") and o.get("rss_mib") else "-"
        fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else "-"  # noqa: E731
        lines.append(
            f"| {r['copies']} | {r['file_mib']:.0f} | {r['events']:,} | "
            f"{fmt(o.get('seconds'))} | {fmt(o.get('rss_mib'))} | "
            f"{fmt(p.get('seconds'))} | {fmt(p.get('rss_mib'))} | {fmt(h.get('seconds'))} | {fmt(h.get('rss_mib'))} | "
            f"{ratio(o, h, 'seconds')} | {share} | {r['exact']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", default="20,100", help="comma-separated copy counts")
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--hta", type=Path, default=HTA_PYTHON, help="Python with HolisticTraceAnalysis installed")
    parser.add_argument(
        "--hta-max-copies", type=int, default=100, help="run HTA only up to this size (it needs ~6x the file in memory)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--workdir", type=Path, default=None, help="where the inflated traces go (default: OUT/kineto)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the inflated traces")
    args = parser.parse_args()
    args.workdir = args.workdir or args.out / "kineto"
    args.out.mkdir(parents=True, exist_ok=True)
    base = totals(args.base)
    with gzip.open(args.base, "rt") as fh:
        args.base_events = len(json.load(fh)["traceEvents"])
    store = args.out / "kineto.json"
    results = json.loads(store.read_text()) if store.exists() else {"runs": {}}
    results["machine"] = machine()
    for copies in (int(c) for c in args.copies.split(",")):
        results["runs"][str(copies)] = run_one(copies, args, base)
        store.write_text(json.dumps(results, indent=1))
        (args.out / "kineto.md").write_text(markdown(results))
        print(markdown(results))


if __name__ == "__main__":
    main()
