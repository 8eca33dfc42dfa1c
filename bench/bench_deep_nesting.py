#!/usr/bin/env python3
"""Benchmark `stagemfu postprocess` on NVTX ranges nested thousands deep.

    bench/bench_deep_nesting.py [--depths 2000,10000,50000] [--name-chars 200] [--out DIR]

A program that pushes a range in a loop and pops them all at the end makes a chain of ranges as
deep as the loop is long. For each depth D, two synthetic exports (bench/synthetic_trace.py):
D nested ranges with names of --name-chars characters, alone ("ranges"), and with one kernel
launched in each range ("ranges + kernels", each kernel then counts in every range enclosing it:
D²/2 (range, kernel) pairs). Each is run through `stagemfu postprocess FILE --format json` in a
fresh process, timed with its peak RSS, with a timeout: `stagemfu.postprocess.load(FILE)` alone
("load", the cost of the nesting), and with --cli also `stagemfu postprocess FILE --format json`
(which adds writing one JSON row per range and per path). Results go to DIR/deep_nesting.json and a
table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_postprocess import STAGEMFU, machine, timed
from synthetic_trace import write_export

LOAD = [sys.executable, "-c", "import sys; from stagemfu import postprocess; postprocess.load(sys.argv[1])"]


def nested(depth: int, name_chars: int, kernels: bool, path: Path) -> Path:
    """D ranges each inside the previous one; optionally one kernel launched at each range's start."""
    pad = "x" * max(0, name_chars - 12)
    ranges = [(10 * i, 10 * (2 * depth - i), f"level-{i:06d}{pad}") for i in range(depth)]
    base = 30 * depth
    launches = [(10 * i + 1, 10 * i + 2, base + 4 * i, base + 4 * i + 3, 0) for i in range(depth)] if kernels else []
    if not launches:  # a trace needs GPU work: one kernel outside every range
        launches = [(-5, -4, base, base + 3, 0)]
    return write_export(path, ranges=ranges, launches=launches, kernel_names=["kernel"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="2000,10000,50000", help="comma-separated nesting depths")
    ap.add_argument("--name-chars", type=int, default=200, help="characters per range name (default 200)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed per run")
    ap.add_argument("--no-kernels", action="store_true", help="only the ranges-alone shape")
    ap.add_argument("--cli", action="store_true", help="also time the command with JSON output")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in (int(d) for d in args.depths.split(",")):
            for kernels in (False,) if args.no_kernels else (False, True):
                trace = nested(depth, args.name_chars, kernels, Path(tmp) / f"deep-{depth}.sqlite")
                commands = {"load": [*LOAD, str(trace)]}
                if args.cli:
                    commands["cli json"] = [*STAGEMFU, "postprocess", str(trace), "--format", "json"]
                for what, cmd in commands.items():
                    result = timed(cmd, timeout=args.timeout)
                    runs.append(
                        {"depth": depth, "kernels": kernels, "name_chars": args.name_chars, "what": what, **result}
                    )
                    shape = "ranges + kernels" if kernels else "ranges"
                    seconds = f"{result['seconds']:.2f} s" if result.get("seconds") else f"> {args.timeout:.0f} s"
                    print(f"| {depth:,} | {shape} | {what} | {seconds} | {result['rss_mib']:,.0f} MiB |", flush=True)
    (args.out / "deep_nesting.json").write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
