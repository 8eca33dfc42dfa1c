"""Small synthetic traces and FLOPs documents with hand-worked answers, shared by the report tests.

``generation_trace`` is one measured generation on one thread (times in ns):

    measured   [0, 10000]
      prefill  [100, 3000]     kernels: vision 400 ns (GPU 1000-1400), language model 1000 ns (1600-2600)
        vision [200, 1000]
      decode   [3000, 5000]    one kernel, 200 ns (3200-3400)
      decode   [5000, 7000]    one kernel, 300 ns (5200-5500)

With a peak of 1 TFLOP/s (1,000 FLOPs per ns), MFU on kernel time is FLOPs / (kernel ns × 1000).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import launch

PEAK_TFLOPS = 1.0
H100 = {"id": 0, "name": "NVIDIA H100 80GB HBM3", "smCount": 132, "clockRate": 1_980_000_000}

# The analyzer's view of that generation: prefill is the language model alone, 2 decode steps.
ANALYSIS = {
    "schema": "stagemfu.analyze/1",
    "model": "toy",
    "inputs": {"mode": "base", "text_tokens": 4, "new_tokens": 3, "batch": 1, "dtype": "bf16"},
    "stages": {
        "vision": {"flops": 200_000, "flops_analytic": 200_000, "flops_torch": 190_000, "bytes": 1_000, "notes": []},
        "prefill": {"flops": 700_000, "flops_analytic": 700_000, "flops_torch": 700_000, "bytes": 5_000},
        "decode": {"flops": 250_000, "flops_analytic": 250_000, "bytes": 800_000},
        "decode_first": {"flops": 100_000, "bytes": 390_000},
        "decode_last": {"flops": 150_000, "bytes": 410_000},
        "encoder": {"flops": None, "notes": ["no counter measured it"]},
    },
    "notes": ["torch's counter misses the vision attention"],
}


def generation_trace(make_trace: Any, directory: Path, *, vision_name: str = "vision", gpus=None) -> Path:
    pairs = [
        launch(1, (300, 310), (1000, 1400), name="vision_gemm"),
        launch(2, (1500, 1510), (1600, 2600), name="lm_gemm"),
        launch(3, (3100, 3110), (3200, 3400), name="decode_gemv"),
        launch(4, (5100, 5110), (5200, 5500), name="decode_gemv"),
    ]
    return make_trace(
        directory,
        calls=[c for c, _ in pairs],
        kernels=[k for _, k in pairs],
        ranges=[
            {"start": 0, "end": 10000, "text": "measured"},
            {"start": 100, "end": 3000, "text": "prefill"},
            {"start": 200, "end": 1000, "text": vision_name},
            {"start": 3000, "end": 5000, "text": "decode"},
            {"start": 5000, "end": 7000, "text": "decode"},
        ],
        gpus=[H100] if gpus is None else gpus,
    )


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path
