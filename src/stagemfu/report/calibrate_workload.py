"""Calibration workload: ``python -m stagemfu.report.calibrate_workload --out events.json``.

``stagemfu calibrate`` runs it under nsys. For each GEMM shape it multiplies two bf16 matrices
``repeats`` times inside an NVTX range named ``gemm_MxNxK`` (all inside ``measured``, after an
untimed warm-up), and times the same launches with CUDA events. The JSON it writes holds the
FLOPs each range did (2·M·N·K per product) and the event time, the independent clock the
report's kernel-time MFU is checked against.

Before each shape the stream is held by a sleep kernel (outside the GEMM range) while the CPU
queues the events and all the products; the GPU then runs them back to back. Without it the
event interval also holds the host's launch delays: measured on an H100, 2048³ products
(23 µs each) showed event time 47 % above kernel time, which is the CPU, not the trace. Even
queued back to back, each product under nsys costs about 4 µs more in event time than its
kernel (CUPTI's per-kernel work; measured 0.85 ms over 200 products of every shape on an H100),
2.5 % of a 4096³ product: the default shapes are those where that stays under 1 %.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stagemfu import schemas
from stagemfu.files import write_output

DEFAULT_SHAPES = ((6144, 6144, 6144), (8192, 8192, 8192), (8192, 8192, 2048))
HOLD_CYCLES = 200_000_000  # ~0.1 s of GPU clock: longer than queuing one shape's launches takes
WARMUP_PRODUCTS = 3


def range_name(m: int, n: int, k: int) -> str:
    return f"gemm_{m}x{n}x{k}"


def gemm_flops(m: int, n: int, k: int) -> int:
    """FLOPs of one (M×K)·(K×N) product: M·N·K multiply-accumulates, 2 FLOPs each."""
    return 2 * m * n * k


def parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"4096,8192x8192x1024"``: a side S means S×S×S, else MxNxK."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        sides = item.lower().split("x")
        if len(sides) not in (1, 3) or not all(s.isdigit() and int(s) > 0 for s in sides):
            raise click.BadParameter(f"{item!r}: give a size S or MxNxK with positive integers")
        m, n, k = (int(sides[0]),) * 3 if len(sides) == 1 else map(int, sides)
        shapes.append((m, n, k))
    if not shapes:
        raise click.BadParameter("no GEMM shape given")
    return tuple(shapes)


def run_gemms(shapes: tuple[tuple[int, int, int], ...], *, repeats: int) -> dict[str, Any]:
    """Run every shape under its NVTX range and time it with CUDA events (needs torch and a GPU)."""
    import torch
    from torch.cuda import nvtx

    if not torch.cuda.is_available():
        raise click.ClickException("the calibration workload needs a CUDA GPU")
    dev = torch.device("cuda")
    rows = []
    operands = {}
    for m, n, k in shapes:
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=dev, dtype=torch.bfloat16)
        out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
        operands[(m, n, k)] = (a, b, out)
    nvtx.range_push("warmup")
    for a, b, out in operands.values():
        for _ in range(WARMUP_PRODUCTS):
            torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    nvtx.range_pop()
    nvtx.range_push("measured")
    for (m, n, k), (a, b, out) in operands.items():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        torch.cuda._sleep(HOLD_CYCLES)  # holds the stream until every launch below is queued
        nvtx.range_push(range_name(m, n, k))
        start.record()
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        end.record()
        nvtx.range_pop()
        torch.cuda.synchronize()
        rows.append(
            {
                "range": range_name(m, n, k),
                "m": m,
                "n": n,
                "k": k,
                "repeats": repeats,
                "flops": gemm_flops(m, n, k) * repeats,
                "event_ns": round(start.elapsed_time(end) * 1e6),
            }
        )
    nvtx.range_pop()
    return {
        "schema": schemas.CALIBRATION_WORKLOAD,
        "device": torch.cuda.get_device_name(dev),
        "dtype": "bf16",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gemms": rows,
    }


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the JSON.")
@click.option(
    "--shapes",
    default=",".join("x".join(map(str, s)) for s in DEFAULT_SHAPES),
    show_default=True,
    help="GEMM shapes: S (S×S×S) or MxNxK, comma-separated.",
)
@click.option("--repeats", type=click.IntRange(min=1), default=200, show_default=True, help="Products per range.")
def main(out: Path, shapes: str, repeats: int) -> None:
    """bf16 GEMMs of known FLOPs in NVTX ranges, timed with CUDA events."""
    doc = run_gemms(parse_shapes(shapes), repeats=repeats)
    write_output(out, json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
