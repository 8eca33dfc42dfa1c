#!/usr/bin/env python3
"""Benchmark `stagemfu analyze --sweep ... --gpu` (the what-if sweep, analytic counter) in fresh processes.

    bench/bench_what_if.py [--out FILE]

Each case runs the command with ``--format json`` to a file; its wall time (start-up included) and
peak RSS (from wait4) are recorded, and the document is checked: every combination has every
stage, and every row has a roofline time. Results are printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA = str(ROOT / "tests" / "fixtures" / "configs" / "llama-3.2-1b")
BATCHES = "batch=1,2,4,8,16,32,64"
CASES = {
    "deepseek-ocr2, 7 batches, H100 (the README example)": ["deepseek-ocr2", "--sweep", BATCHES, "--gpu", "H100"],
    "deepseek-ocr2 gundam, 7 batches x 5 crop counts, H200": [
        "deepseek-ocr2", "--mode", "gundam", "--sweep", BATCHES, "--sweep", "crops=2,3,4,5,6", "--gpu", "H200",
    ],
    "llama-3.2-1b, 64 batches x 64 prompt lengths (4,096 combinations), H100": [
        LLAMA, "--sweep", "batch=" + ",".join(str(b) for b in range(1, 65)),
        "--sweep", "text_tokens=" + ",".join(str(64 * t) for t in range(1, 65)), "--gpu", "H100",
    ],
}  # fmt: skip


def run_case(args: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "stagemfu", "analyze", *args, "--format", "json", "-o", str(out)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stagemfu analyze {' '.join(args)[:80]} failed: {(process.stderr.read() or '').strip()}")
    doc = json.loads(out.read_text())
    points = 1
    for values in doc["sweep"].values():
        points *= len(values)
    stages = {r["stage"] for r in doc["rows"]}
    if len(doc["rows"]) != points * len(stages) or any(r["roofline_ns"] is None for r in doc["rows"]):
        raise SystemExit(f"{args[0]}: the sweep document misses rows or roofline times")
    return {"combinations": points, "rows": len(doc["rows"]), "seconds": round(seconds, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in CASES.items():
            results[name] = run_case(args, Path(tmp) / "sweep.json")
            print(f"{name}: {results[name]}", flush=True)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
