#!/usr/bin/env python3
"""Speed and memory of counting FLOPs from op ranges (``stagemfu report --op-flops``).

    bench/bench_op_flops.py [--ops 1000000] [--trace bench/traces/llama1b_generate_shapes.sqlite.xz] [--out FILE]

1. Synthetic: training steps of a decoder written as emit_nvtx(record_shapes=True) leaves them
   (``step`` > ``forward``/``backward``/``optimizer``; per layer linear > t + addmm, fused
   attention > its kernel op, norms and elementwise ops; backward nodes and their ``mm`` on the
   autograd thread; one kernel per leaf op), built in memory as the reader's frames, ``--ops`` op
   ranges in all. Timed: parsing and counting (``op_ranges`` + ``count_op_flops``), in a fresh
   process each, best of ``--repeat``, with that process's peak RSS. The FLOPs are checked
   against the template's hand count, so a fast wrong answer fails.
2. Real: ``stagemfu report --op-flops`` (table and JSON) and ``stagemfu postprocess`` in every
   output format (table, Markdown, CSV, JSON, SQLite), end to end on a recorded trace (by default
   the Llama-3.2-1B-shape generate under emit_nvtx in ``bench/traces``: a range per operator
   call), each in a fresh process after one run that fills the export cache: wall time, CPU time
   (user + system) and peak RSS. Standard output goes to a file, as ``-o`` would write it.

Results are printed and written as JSON to ``--out``. Timings belong here, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

PID, MAIN, AUTOGRAD = 100, 100, 101
STAGES = ("forward", "backward", "optimizer")
HIDDEN, TOKENS, LAYERS = 2048, 4096, 16
# (name without seq/op_id, depth, thread, launches a kernel, FLOPs when counted)
LINEAR = f"sizes = [[{TOKENS}, {HIDDEN}], [{HIDDEN}, {HIDDEN}], []]"
ADDMM = f"sizes = [[{HIDDEN}], [{TOKENS}, {HIDDEN}], [{HIDDEN}, {HIDDEN}], [], []]"
ATTN = "sizes = [[4, 16, 1024, 128], [4, 4, 1024, 128], [4, 4, 1024, 128], [], [], [], []]"
# grad_out, query, key, value, out, logsumexp, then non-tensor arguments
ATTN_BACKWARD = (
    "sizes = [[4, 16, 1024, 128], [4, 16, 1024, 128], [4, 4, 1024, 128], [4, 4, 1024, 128], "
    "[4, 16, 1024, 128], [4, 16, 1024], [], []]"
)
MM_A = f"sizes = [[{TOKENS}, {HIDDEN}], [{HIDDEN}, {HIDDEN}]]"
MM_B = f"sizes = [[{HIDDEN}, {TOKENS}], [{TOKENS}, {HIDDEN}]]"
GEMM = 2 * TOKENS * HIDDEN * HIDDEN
ATTENTION = 2 * 4 * 16 * 1024 * 1024 * 256
LAYER_FORWARD = [
    ("aten::rms_norm", "sizes = [[4096, 2048], [], [2048], []]", 0, MAIN, True, 0),
    *[
        op
        for _ in range(4)
        for op in (
            ("aten::linear", LINEAR, 0, MAIN, False, 0),
            ("aten::t", "sizes = [[2048, 2048]]", 1, MAIN, False, 0),
            ("aten::addmm", ADDMM, 1, MAIN, True, GEMM),
        )
    ],
    ("aten::mul", "sizes = [[4, 16, 1024, 128], [1024, 128]]", 0, MAIN, True, 0),
    ("aten::scaled_dot_product_attention", ATTN, 0, MAIN, False, 0),
    ("aten::_scaled_dot_product_flash_attention", ATTN, 1, MAIN, False, ATTENTION),
    ("aten::_flash_attention_forward", "sizes = [[4, 1024, 16, 128]]", 2, MAIN, True, 0),
    ("aten::add", "sizes = [[4096, 2048], [4096, 2048], []]", 0, MAIN, True, 0),
]
LAYER_BACKWARD = [
    *[
        op
        for _ in range(4)
        for op in (
            ("AddmmBackward0", "sizes = [[4096, 2048]]", 0, AUTOGRAD, False, 0),
            ("aten::mm", MM_A, 1, AUTOGRAD, True, GEMM),
            ("aten::mm", MM_B, 1, AUTOGRAD, True, GEMM),
            ("aten::sum", "sizes = [[4096, 2048], [], [], []]", 1, AUTOGRAD, True, 0),
        )
    ],
    ("ScaledDotProductFlashAttentionBackward0", "sizes = [[4, 16, 1024, 128]]", 0, AUTOGRAD, False, 0),
    (
        "aten::_scaled_dot_product_flash_attention_backward",
        ATTN_BACKWARD,
        1,
        AUTOGRAD,
        False,
        5 * ATTENTION // 2,
    ),
    ("aten::_flash_attention_backward", "sizes = [[4, 1024, 16, 128]]", 2, AUTOGRAD, True, 0),
    ("MulBackward0", "sizes = [[4096, 2048]]", 0, AUTOGRAD, False, 0),
    ("aten::mul", "sizes = [[4096, 2048], [4096, 2048]]", 1, AUTOGRAD, True, 0),
]
OPTIMIZER = [("aten::_fused_adamw_", "sizes = [[2048, 2048], [2048, 2048], [], []]", 0, MAIN, True, 0)]


def step_template() -> list[tuple[str, str, int, int, bool, int, str]]:
    """One training step's op ranges, with the stage each belongs to."""
    ops = [(*op, "forward") for _ in range(LAYERS) for op in LAYER_FORWARD]
    ops += [(*op, "backward") for _ in range(LAYERS) for op in LAYER_BACKWARD]
    return ops + [(*op, "optimizer") for op in OPTIMIZER]


def synthetic_trace(n_ops: int):
    """A Trace of whole training steps holding about ``n_ops`` op ranges, and their hand-counted FLOPs."""
    from stagemfu.postprocess.trace import OPS_SCHEMA, HeldOps, Trace

    template = step_template()
    per_step, steps = len(template), max(1, n_ops // len(template))
    depth = np.array([t[2] for t in template])
    # Times within a step: an op opens at 10 * k (k: its place in the template) and closes after
    # its nested ops, so nesting follows depth; backward ops open while `backward` is open.
    k = np.arange(per_step)
    closes = np.array([next((j for j in range(i + 1, per_step) if depth[j] <= depth[i]), per_step) for i in k])
    rel_start, rel_end = 10 * k + depth, 10 * closes - depth - 1
    span = 10 * per_step + 100
    offset = np.repeat(np.arange(steps, dtype=np.int64) * span, per_step)
    start, end = np.tile(rel_start, steps) + offset, np.tile(rel_end, steps) + offset
    tid = np.tile([t[3] for t in template], steps)
    op_id = np.arange(1, steps * per_step + 1)
    base = np.array([f"{t[0]}, seq = {{}}, op_id = {{}}, {t[1]}" for t in template], dtype=object)
    names = [b.format(i, i) for b, i in zip(np.tile(base, steps), op_id)]
    stage_of = np.array([t[6] for t in template])
    stage_rows = [("step", -5, span - 50)] + [
        (s, int(rel_start[stage_of == s].min()), int(rel_end[stage_of == s].max())) for s in STAGES
    ]
    s_names = [n for _ in range(steps) for n, _, _ in stage_rows]
    s_start = np.concatenate([np.array([a for _, a, _ in stage_rows]) + i * span for i in range(steps)])
    s_end = np.concatenate([np.array([b for _, _, b in stage_rows]) + i * span for i in range(steps)])
    n_stage = len(s_names)
    ranges = pl.DataFrame(
        {
            "range_id": np.arange(n_stage + len(names), dtype=np.int64),
            "domain": ["stagemfu"] * n_stage + [""] * len(names),
            "name": s_names + names,
            "style": ["PushPop"] * (n_stage + len(names)),
            "start": np.concatenate([s_start, start]).astype(np.int64),
            "end": np.concatenate([s_end, end]).astype(np.int64),
            "pid": np.full(n_stage + len(names), PID, dtype=np.int64),
            "tid": np.concatenate([np.full(n_stage, MAIN), tid]).astype(np.int64),
            "end_tid": pl.Series([None] * (n_stage + len(names)), dtype=pl.Int64),
        }
    )
    launch = np.flatnonzero(np.tile([t[4] for t in template], steps))
    n_k = len(launch)
    ops = pl.DataFrame(
        {
            "kind": pl.Series(["kernel"] * n_k, dtype=OPS_SCHEMA["kind"]),
            "start": start[launch] + 1_000_000,
            "end": start[launch] + 1_000_005,
            "device": np.zeros(n_k, dtype=np.int32),
            "stream": np.full(n_k, 7, dtype=np.int32),
            "correlation_id": np.arange(n_k, dtype=np.int64),
            "pid": np.full(n_k, PID, dtype=np.int64),
            "name_id": np.zeros(n_k, dtype=np.int64),
            "call_start": start[launch] + 1,
            "call_end": start[launch] + 2,
            "tid": tid[launch].astype(np.int64),
        }
    )
    trace = Trace(
        path=Path("synthetic"),
        format="synthetic",
        tool_version="synthetic",
        origin="synthetic",
        ranges=ranges,
        ops=HeldOps(ops),
        names=pl.DataFrame({"name_id": [0], "name": ["kernel"]}),
        gpus=pl.DataFrame(schema={"id": pl.Int64, "name": pl.Utf8, "sms": pl.Int64, "clock_hz": pl.Int64}),
    )
    expected = {s: steps * sum(t[5] for t in template if t[6] == s) for s in STAGES}
    return trace, expected, len(names)


def count_child(n_ops: int) -> None:
    """In this process: build the synthetic trace, time parsing and counting, check, print JSON."""
    from stagemfu.postprocess.op_ranges import op_ranges
    from stagemfu.report.op_flops import count_op_flops

    trace, expected, n = synthetic_trace(n_ops)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    opr = op_ranges(trace)
    t1 = time.perf_counter()
    opc = count_op_flops(opr)
    t2 = time.perf_counter()
    per_stage = dict(
        opc.instances.join(trace.ranges.select("range_id", "name"), on="range_id")
        .group_by("name")
        .agg(pl.col("flops").sum())
        .iter_rows()
    )
    assert all(per_stage[s] == f for s, f in expected.items()), (per_stage, expected)
    print(
        json.dumps(
            {
                "op_ranges": n,
                "kernels": trace.ops.held.height,
                "op_ranges_s": t1 - t0,
                "count_s": t2 - t1,
                "total_s": t2 - t0,
                "rss_before_mib": built / 1024,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def timed(argv: list[str], *, keep_output: bool = True) -> dict:
    """Run ``argv`` in a fresh process: wall seconds, CPU seconds, that process's peak RSS (MiB)
    and, with ``keep_output``, its standard output (a JSON document of op ranges is 340 MB)."""
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{err.read().decode()[-2000:]}")
        return {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024,
            "stdout_mb": os.fstat(out.fileno()).st_size / 1e6,
            **({"stdout": out.read().decode()} if keep_output else {}),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000, help="op ranges in the synthetic trace")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trace", type=Path, default=ROOT / "bench" / "traces" / "llama1b_generate_shapes.sqlite.xz")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        count_child(args.child)
        return
    runs = []
    for _ in range(args.repeat):
        child = timed([sys.executable, __file__, "--child", str(args.ops)])
        runs.append(json.loads(child["stdout"]) | {"peak_rss_mib": child["peak_rss_mib"]})
    best = min(runs, key=lambda r: r["total_s"])
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "synthetic": best | {"peak_rss_mib": max(r["peak_rss_mib"] for r in runs)},
    }
    rss = result["synthetic"]["peak_rss_mib"]
    print(
        f"synthetic: {best['op_ranges']:,} op ranges, {best['kernels']:,} kernels: parse + nesting "
        f"{best['op_ranges_s']:.2f} s, count {best['count_s']:.2f} s, total {best['total_s']:.2f} s; "
        f"peak RSS {rss:,.0f} MiB ({best['rss_before_mib']:,.0f} MiB after building the frames)"
    )
    if args.trace.is_file():
        cli = [sys.executable, "-m", "stagemfu"]
        trace = str(args.trace)
        real = {}
        with tempfile.TemporaryDirectory() as scratch:
            database = str(Path(scratch) / "times.db")
            for label, argv in (
                ("report --op-flops", [*cli, "report", trace, "--op-flops"]),
                ("report --op-flops --format json", [*cli, "report", trace, "--op-flops", "--format", "json"]),
                *[
                    (f"postprocess --format {fmt}", [*cli, "postprocess", trace, "--format", fmt])
                    for fmt in ("table", "md", "csv", "json")
                ],
                ("postprocess --format sqlite", [*cli, "postprocess", trace, "--format", "sqlite", "-o", database]),
            ):
                timed(argv, keep_output=False)  # the first run decompresses into the cache
                run = real[label] = timed(argv, keep_output=False)
                print(
                    f"{args.trace.name}: stagemfu {label}: {run['wall_s']:.2f} s (CPU {run['cpu_s']:.2f} s), "
                    f"peak RSS {run['peak_rss_mib']:,.0f} MiB"
                )
        result["real"] = {"trace": args.trace.name, "load_average": os.getloadavg(), **real}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
