#!/usr/bin/env python3
"""What a stage range costs when no profiler is attached (the budget is 1 µs per range).

    bench/bench_nvtx_api.py [--number 200000] [--repeat 7] [--json FILE]

Times, per range (best of --repeat runs of --number ranges, minus the loop's own cost):
  * ``with stagemfu.stage(name)``, and a call through ``@stagemfu.stage(name)`` minus a plain call;
  * nvtx's own ``Domain.push_range``/``pop_range`` (what the API calls when a profiler is attached);
  * with torch: the forward hooks of ``stagemfu.instrument`` on a module (minus the bare forward),
    and one ``generation_stages`` step hook.
Run it outside nsys: under nsys the ranges are real and cost what nsys makes them cost.
Exits 1 when a range costs more than 1 µs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import stagemfu  # noqa: E402
from stagemfu.collect import api  # noqa: E402

BUDGET_US = 1.0


def per_call_us(statement, *, number: int, repeat: int, baseline=None) -> float:
    """Best time per call of ``statement`` in µs, minus the best time of ``baseline``."""
    best = min(timeit.repeat(statement, number=number, repeat=repeat)) / number
    if baseline is not None:
        best -= min(timeit.repeat(baseline, number=number, repeat=repeat)) / number
    return max(best, 0.0) * 1e6


def measurements(number: int, repeat: int) -> dict[str, float]:
    sink = api.ranges()
    ranged = stagemfu.stage("decode")

    def context() -> None:
        with ranged:
            pass

    def empty() -> None:
        pass

    decorated = stagemfu.stage("decode")(empty)
    out = {
        "with stage(name)": per_call_us(context, number=number, repeat=repeat, baseline=empty),
        "@stage(name) call": per_call_us(decorated, number=number, repeat=repeat, baseline=empty),
        "sink push+pop": per_call_us(lambda: (sink.push("decode"), sink.pop()), number=number, repeat=repeat),
    }
    try:
        import torch
    except ImportError:
        return out
    module = torch.nn.Identity()
    x = torch.zeros(1)
    bare = per_call_us(lambda: module(x), number=number // 10, repeat=repeat)
    with api.instrument(module, {"sam": ""}):
        hooked = per_call_us(lambda: module(x), number=number // 10, repeat=repeat)
    out["instrument hooks (per forward)"] = max(hooked - bare, 0.0)
    steps = api.generation_stages(module)
    with steps:
        stepped = per_call_us(lambda: module(x), number=number // 10, repeat=repeat)
    out["generation_stages step"] = max(stepped - bare, 0.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    attached = getattr(api.ranges(), "attached", None)
    if attached:
        print("a profiler is attached: these are real ranges, not the no-op cost", file=sys.stderr)
    results = measurements(args.number, args.repeat)
    width = max(map(len, results))
    print(f"{'range (no profiler attached)':<{width}}  µs per range")
    for name, us in results.items():
        print(f"{name:<{width}}  {us:8.3f}")
    if args.json is not None:
        machine = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
        args.json.write_text(json.dumps({"machine": machine, "us_per_range": results}, indent=2) + "\n")
    over = [name for name, us in results.items() if us > BUDGET_US]
    if over and not attached:
        print(f"over the {BUDGET_US} µs budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
