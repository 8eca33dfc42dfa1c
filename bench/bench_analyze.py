#!/usr/bin/env python3
"""Benchmark `stagemfu analyze` with all three counters on the published DeepSeek-OCR models.

    bench/bench_analyze.py [--cases deepseek-ocr:base,deepseek-ocr2:gundam:6] [--out DIR]

Each case (MODEL:MODE[:CROPS]) runs `stagemfu analyze MODEL --mode MODE [--crops N] --format json`
in a fresh process; its wall time and peak RSS (from wait4) are recorded. The benchmark checks
itself: the command must exit 0, the torch and fvcore counters must have measured every stage, and
no stage may carry a disagreement note (all three counters within 2 %). The issue's budget is 60 s
and 8 GB per full analysis on a 2-core CPU.

Results go to DIR/results.json and DIR/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CASES = (
    "deepseek-ocr:tiny,deepseek-ocr:base,deepseek-ocr:large,deepseek-ocr:gundam:9,"
    "deepseek-ocr2:base,deepseek-ocr2:gundam:6"
)
BUDGET_S, BUDGET_GB = 60, 8


def run_case(case: str, out: Path) -> dict:
    model, mode, *crops = case.split(":")
    document = out / f"{case.replace(':', '_')}.json"
    command = [
        sys.executable,
        "-m",
        "stagemfu",
        "analyze",
        model,
        "--mode",
        mode,
        "--format",
        "json",
        "-o",
        str(document),
    ]
    command += ["--crops", crops[0]] if crops else []
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{case}: stagemfu analyze failed: {stderr.strip()}")
    doc = json.loads(document.read_text())
    for stage, entry in doc["stages"].items():
        missing = [c for c in ("torch", "fvcore") if entry[f"flops_{c}"] is None]
        if missing or entry["notes"]:
            raise SystemExit(f"{case}: stage {stage}: counters missing {missing} or disagreeing {entry['notes']}")
    rss_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    return {
        "case": case,
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(rss_gb, 2),
        "image_tokens": doc["shapes"]["image_tokens"],
        "vision_gflop": round(doc["stages"]["vision"]["flops"] / 1e9, 1),
        "prefill_gflop": round(doc["stages"]["prefill"]["flops"] / 1e9, 1),
        "within_budget": seconds <= BUDGET_S and rss_gb <= BUDGET_GB,
    }


def markdown(rows: list[dict]) -> str:
    header = "| case | image tokens | vision GFLOP | prefill GFLOP | seconds | peak RSS (GB) | within 60 s / 8 GB |"
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        header,
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['case']} | {r['image_tokens']} | {r['vision_gflop']:,} | {r['prefill_gflop']:,} | {r['seconds']} "
        f"| {r['peak_rss_gb']} | {'yes' if r['within_budget'] else 'NO'} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="Comma-separated MODEL:MODE[:CROPS].")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "analyze")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases.split(","):
        rows.append(run_case(case, args.out))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
