#!/usr/bin/env python3
"""What collecting costs: the same built-in run without nsys, with nsys tracing NVTX only, and as
`stagemfu run` records it (CUDA + NVTX).

    bench/bench_collect_overhead.py [--out DIR] [--nsys PATH] [--rounds N] -- MODEL [runner options]
    bench/bench_collect_overhead.py -- deepseek-ocr2 --mode base --new-tokens 16 --repeat 5

Each variant runs the runner (`python -m stagemfu.collect.runner`) in a fresh process; the runner
times every generate call up to the GPU's end (`call_wall_ns` in its shapes.json), the same way
in every variant. The variants run one after the other, --rounds times (default 3), so that a
drift of the machine hits them all alike. Reported per variant: median and minimum wall time of
all its measured calls, the median of each round, and the overhead of the median over the run
without nsys. Without a profiler the stage API installs no
hooks, so the first variant is the model's own speed. Results go to DIR/results.json and
DIR/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from stagemfu.collect.command import ProfileOptions, profile_argv  # noqa: E402
from stagemfu.collect.nsys import require_nsys  # noqa: E402

RUNNER = [sys.executable, "-m", "stagemfu.collect.runner"]
BASELINE = "no nsys"
VARIANTS = {  # label -> (output subdirectory, nsys tracing flags or None for no nsys)
    BASELINE: ("plain", None),
    "nsys, NVTX only": ("nvtx", ProfileOptions(trace="nvtx")),
    "nsys, CUDA + NVTX (stagemfu run)": ("cuda-nvtx", ProfileOptions()),
}


def run_variant(name: str, tracing: ProfileOptions | None, runner_args: list[str], nsys: str, directory: Path) -> dict:
    """One run of the runner, under nsys or not; the measured calls' wall times in ns."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [*RUNNER, *runner_args, "--out-dir", str(directory)]
    if tracing is not None:
        command = profile_argv(nsys, command, output=directory / "trace", options=tracing)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-2000:]}")
    shapes = json.loads((directory / "shapes.json").read_text())
    return {"command": command, "measured_ns": shapes["call_wall_ns"]["measured"], "device": shapes["device_name"]}


def markdown(results: dict[str, list[dict]]) -> str:
    """One row per variant over all rounds: calls, median, min, median per round, overhead."""
    walls = {name: [ns for run in runs for ns in run["measured_ns"]] for name, runs in results.items()}
    base = statistics.median(walls[BASELINE])
    lines = [
        "| variant | measured calls | median ms | min ms | median ms per round | overhead |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, runs in results.items():
        median = statistics.median(walls[name])
        rounds = ", ".join(f"{statistics.median(run['measured_ns']) / 1e6:.1f}" for run in runs)
        cells = [name, str(len(walls[name])), f"{median / 1e6:.3f}", f"{min(walls[name]) / 1e6:.3f}", rounds]
        lines.append("| " + " | ".join(cells) + f" | {100 * (median / base - 1):+.1f} % |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(usage=__doc__.splitlines()[3].strip())
    parser.add_argument("--out", type=Path, default=Path("bench-out/collect-overhead"))
    parser.add_argument("--nsys", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("runner_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    runner_args = args.runner_args[1:] if args.runner_args[:1] == ["--"] else args.runner_args
    if not runner_args:
        parser.error("give the runner's MODEL and options after --")
    nsys = require_nsys(args.nsys)
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, (subdirectory, tracing) in VARIANTS.items():
            directory = args.out / f"{subdirectory}-{round_}"
            results[name].append(run_variant(name, tracing, runner_args, nsys, directory))
    table = markdown(results)
    device = results[BASELINE][0]["device"]
    (args.out / "results.json").write_text(json.dumps({"runner_args": runner_args, "results": results}, indent=2))
    (args.out / "results.md").write_text(f"`{' '.join(runner_args)}` on {device}\n\n{table}")
    print(f"{' '.join(runner_args)} on {device}\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
