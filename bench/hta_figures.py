#!/usr/bin/env python3
"""HolisticTraceAnalysis's figures for a torch.profiler trace, for the tests to compare with stagemfu's.

    .benchvenv/bin/python bench/hta_figures.py tests/fixtures/traces/llama_train.pt.trace.json.gz \\
        tests/fixtures/traces/llama_train.hta.json

Runs in a separate environment with HTA installed (``pip install HolisticTraceAnalysis``; it is no
dependency of stagemfu). HTA rounds time stamps to whole microseconds unless
``HTA_DISABLE_NS_ROUNDING=1``, which this script sets, so that both tools see Kineto's nanoseconds.
It writes, per kernel name (memcpy and memset included, as HTA names them), the count and the total
duration, shortest and longest from ``TraceAnalysis.get_gpu_kernel_breakdown`` (in ns, rounded from
HTA's microseconds), and the rank's kernel time from ``get_temporal_breakdown``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HTA_DISABLE_NS_ROUNDING"] = "1"


def figures(trace: Path) -> dict:
    """HTA's kernel breakdown and temporal breakdown of one trace, as plain numbers."""
    import hta
    from hta.trace_analysis import TraceAnalysis

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(trace, Path(tmp) / "rank-0.pt.trace.json.gz")
        analysis = TraceAnalysis(trace_dir=tmp)
        _, kernels = analysis.get_gpu_kernel_breakdown(
            visualize=False, duration_ratio=1.0, num_kernels=1_000_000, include_memory_kernels=True
        )
        temporal = analysis.get_temporal_breakdown(visualize=False)
    per_name = {
        str(row["name"]): {
            "count": round(row["sum (us)"] / row["mean (us)"]),
            "sum_ns": round(row["sum (us)"] * 1000),
            "min_ns": round(row["min (us)"] * 1000),
            "max_ns": round(row["max (us)"] * 1000),
        }
        for _, row in kernels.iterrows()
    }
    return {
        "source": "HolisticTraceAnalysis get_gpu_kernel_breakdown and get_temporal_breakdown, "
        "HTA_DISABLE_NS_ROUNDING=1 (bench/hta_figures.py)",
        "hta_version": getattr(hta, "__version__", "unknown"),
        "kernels": dict(sorted(per_name.items())),
        # HTA's "kernel time" of a rank runs from its first GPU operation's start to its last one's end.
        "kernel_time_ns": round(temporal["kernel_time(us)"].iloc[0] * 1000),
    }


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    result = figures(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
