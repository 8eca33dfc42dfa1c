#!/usr/bin/env python3
"""A synthetic export shaped like `torch.autograd.profiler.emit_nvtx(record_shapes=True)` output.

    bench/emit_nvtx_trace.py OUT.sqlite [--kernels 94000] [--steps 500]

Under emit_nvtx every aten operator is an NVTX range whose text carries its sequence number,
operator id and input shapes, so almost every range name is distinct:
``aten::addmm, seq = 3021, op_id = 86, sizes = [[1, 2048], [2048, 8192]], input_op_ids = [...]``.
Operators nest (``aten::linear`` holds ``aten::t`` and ``aten::addmm``) inside a ``generate``
range and one ``decode_step`` range per generated token. Each unit here is five operator
ranges and three kernels (linear{t, addmm}, mul, add), so KERNELS kernels come with about
5/3 as many ranges: the defaults give the shape of a Llama-3.2-1B generate recorded that way
(94 k kernels, about 157 k operator ranges).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthetic_trace import write_export

KERNEL_NAMES = [
    "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn",
    "void at::native::elementwise_kernel<128, 2, at::native::mul_kernel>(int, at::native::mul_kernel)",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
]


def shapes(seq: int) -> str:
    """Input shapes that change with the decode position, as record_shapes writes them."""
    return f"[[1, {1 + seq % 2048}, 2048], [2048, 8192]]"


def emit_nvtx_export(path: Path, kernels: int, steps: int) -> Path:
    units = kernels // 3
    per_step = max(1, units // steps)
    ranges, launches = [], []
    t, gpu, seq = 0, 0, 0

    def op(name: str, start: int, end: int) -> None:
        nonlocal seq
        ranges.append((start, end, f"{name}, seq = {seq}, op_id = {seq + 7}, sizes = {shapes(seq)}, input_op_ids = []"))
        seq += 1

    def launch(at: int, kernel: int) -> None:
        nonlocal gpu
        gpu = max(gpu, at + 500)
        launches.append((at, at + 2, gpu, gpu + 900, kernel))
        gpu += 1000

    generate_start = t
    for step in range(steps):
        step_start = t
        for _ in range(per_step):
            # aten::linear { aten::t, aten::addmm* }, aten::mul*, aten::add*  (* launches a kernel)
            op("aten::linear", t, t + 60)
            op("aten::t", t + 5, t + 15)
            op("aten::addmm", t + 20, t + 50)
            launch(t + 30, 0)
            op("aten::mul", t + 70, t + 90)
            launch(t + 75, 1)
            op("aten::add", t + 100, t + 120)
            launch(t + 105, 2)
            t += 130
        ranges.append((step_start, t, f"decode_step {step}"))
        t += 10
    ranges.append((generate_start, t, "generate"))
    return write_export(path, ranges=ranges, launches=launches, kernel_names=KERNEL_NAMES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--kernels", type=int, default=94_000)
    ap.add_argument("--steps", type=int, default=500, help="decode steps (default 500)")
    args = ap.parse_args()
    emit_nvtx_export(args.out, args.kernels, args.steps)


if __name__ == "__main__":
    main()
