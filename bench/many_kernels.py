#!/usr/bin/env python3
"""A CUDA workload of many tiny kernels in NVTX ranges, to record a large report for benchmarks.

    nsys profile --trace=cuda,nvtx -o many python bench/many_kernels.py KERNELS [PER_RANGE]

Launches KERNELS one-element additions (default 1,000,000), PER_RANGE (default 1,000) to an NVTX
range named "step": a launch-bound trace whose size is all kernels and launching calls, like a
long decode loop.
"""

from __future__ import annotations

import sys

import torch


def main(kernels: int, per_range: int) -> None:
    x = torch.zeros(1, device="cuda")
    for _ in range(kernels // per_range):
        torch.cuda.nvtx.range_push("step")
        for _ in range(per_range):
            x.add_(1)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    print(f"{kernels // per_range * per_range} kernels, x = {x.item():.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, int(sys.argv[2]) if len(sys.argv) > 2 else 1_000)
