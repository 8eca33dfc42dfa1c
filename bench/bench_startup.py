#!/usr/bin/env python3
"""Start-up time of the command line: what a command costs before it does its work.

    bench/bench_startup.py [--src DIR] [--runs N] [--trace TRACE] [--out FILE]

Each command runs N times in a fresh interpreter (``python -m stagemfu ...`` with ``--src`` first
on the path, this checkout's ``src/`` by default, so another checkout can be measured the same
way); for each, the minimum and median wall time and CPU time (user + system, from ``wait4``) are
kept. CPU time is the steadier figure on a shared machine. The commands:

  * ``python -c pass``: the interpreter alone;
  * ``import stagemfu``; ``stagemfu --help``; ``stagemfu postprocess --help``;
  * ``stagemfu postprocess TRACE --format json`` on a small real trace (the tiny_vlm fixture,
    3,003 kernels, decompressed once), the command the start-up goal is about;
  * the same under ``-X importtime``, N times: the time spent importing modules (each module's
    fastest of the N runs, summed), and the packages that take longest, so a regression names its
    cause. The per-module minimum filters out the other work of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_TRACE = ROOT / "tests" / "fixtures" / "traces" / "tiny_vlm.sqlite.xz"
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed")
    return wall, usage.ru_utime + usage.ru_stime


def measure(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    walls, cpus = zip(*(run(argv, env) for _ in range(runs)))
    return {
        "wall_min_s": min(walls),
        "wall_median_s": statistics.median(walls),
        "cpu_min_s": min(cpus),
        "cpu_median_s": statistics.median(cpus),
    }


def import_profile(argv: list[str], env: dict[str, str], runs: int) -> dict[str, object]:
    """Seconds spent importing (per module the fastest of ``runs``, summed), and the ten packages
    that took most."""
    fastest: dict[str, int] = {}
    for _ in range(runs):
        cmd = [argv[0], "-X", "importtime", *argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        for us, name in IMPORT_LINE.findall(done.stderr):
            fastest[name] = min(int(us), fastest.get(name, int(us)))
    per_package: dict[str, int] = {}
    for name, us in fastest.items():
        root = name.split(".")[0]
        per_package[root] = per_package.get(root, 0) + us
    largest = sorted(per_package.items(), key=lambda kv: -kv[1])[:10]
    return {
        "import_s": sum(per_package.values()) / 1e6,
        "largest": {name: us / 1e6 for name, us in largest},
        "loaded": sorted(per_package),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ directory to measure")
    ap.add_argument("--runs", type=int, default=15, help="runs per command (default %(default)s)")
    ap.add_argument("--trace", type=Path, default=BASE_TRACE, help="the small trace (.sqlite or .sqlite.xz)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stagemfu-startup-"))
    try:
        trace = work / "trace.sqlite"
        opener = lzma.open if args.trace.suffix == ".xz" else open
        with opener(args.trace, "rb") as src, trace.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        env = {**os.environ, "PYTHONPATH": str(args.src.resolve()), "XDG_CACHE_HOME": str(work / "cache")}
        py = sys.executable
        postprocess = [py, "-m", "stagemfu", "postprocess", str(trace), "--format", "json", "-o", str(work / "o.json")]
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "import stagemfu": [py, "-c", "import stagemfu"],
            "stagemfu --help": [py, "-m", "stagemfu", "--help"],
            "stagemfu postprocess --help": [py, "-m", "stagemfu", "postprocess", "--help"],
            "stagemfu postprocess TRACE --format json": postprocess,
        }
        results = {
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
            "src": str(args.src),
            "runs": args.runs,
            "commands": {name: measure(argv, env, args.runs) for name, argv in commands.items()},
            "postprocess_imports": import_profile(postprocess, env, args.runs),
            "help_imports": import_profile(commands["stagemfu --help"], env, args.runs),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
