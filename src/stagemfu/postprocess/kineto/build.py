"""The blocks of a Kineto trace gathered into the format-neutral trace (:class:`~stagemfu.postprocess.trace.Trace`).

Blocks arrive one at a time (:mod:`.scan`, :mod:`.events`) and only their numbers stay: an
operation keeps its kind, times, device, stream, correlation id and a name id (names are interned
as they come: a trace repeats a few thousand kernel names millions of times), a launching call its
times, process, thread and correlation id. At the end each operation gets its launching call, the
one with the same correlation id (CUPTI numbers the calls of a process uniquely, and a Kineto file
holds one process), as nsys's rule says; the operation's process and thread are its call's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stagemfu.errors import TraceError
from stagemfu.postprocess.kineto.events import Block, read_block
from stagemfu.postprocess.launches import CORRELATION_LIMIT, match_calls
from stagemfu.postprocess.trace import (
    GPUS_SCHEMA,
    OPS_SCHEMA,
    PROCESSES_SCHEMA,
    RANGES_SCHEMA,
    HeldOps,
    Trace,
)

FORMAT = "kineto"
UNNAMED = "[unnamed operation]"
NAMES_SCHEMA = {"name": pl.String, "name_id": pl.Int64}
# Metadata worth showing, from the top level and from distributedInfo: key -> name in Trace.details.
DETAILS = {"schemaVersion": "schema_version", "cupti_version": "cupti_version", "cuda_runtime_version": "cuda_runtime"}
DISTRIBUTED = {"rank": "rank", "world_size": "world_size"}
PROFILE_CUDA = "profile with activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]"


class Collector:
    """The numbers of a trace's blocks, gathered as they come (see the module docstring)."""

    def __init__(self, *, op_ranges: bool = False) -> None:
        self.op_ranges = op_ranges
        self.names = pl.DataFrame(schema=NAMES_SCHEMA)
        self.blocks: list[Block] = []

    def add(self, texts: pl.Series) -> None:
        """Read one block's events and keep their numbers."""
        block = read_block(texts, op_ranges=self.op_ranges)
        names = block.ops.select(pl.col("name").fill_null(UNNAMED))
        fresh = names.unique(maintain_order=True).join(self.names, on="name", how="anti")
        if fresh.height:
            ids = pl.int_range(self.names.height, self.names.height + fresh.height, dtype=pl.Int64)
            self.names = pl.concat([self.names, fresh.with_columns(name_id=ids)])
        ops = names.join(self.names, on="name", how="left", maintain_order="left")
        self.blocks.append(
            Block(
                ops=block.ops.drop("name").with_columns(ops["name_id"]),
                calls=block.calls,
                ranges=block.ranges,
                op_ranges=block.op_ranges,
                processes=block.processes,
            )
        )

    def trace(self, path: Path, header: dict[str, Any]) -> Trace:
        """The trace: operations tied to their calls, ranges numbered, GPUs and processes named."""
        ops, calls, ranges, op_ranges, processes = (
            pl.concat([getattr(b, part) for b in self.blocks]) if self.blocks else None
            for part in ("ops", "calls", "ranges", "op_ranges", "processes")
        )
        if ops is None or ops.is_empty():
            raise TraceError(f"{path}: has no GPU operations (kernel, gpu_memcpy or gpu_memset events); {PROFILE_CUDA}")
        notes = []
        readable = pl.all_horizontal(pl.col("start", "pid", "tid").is_not_null())
        unreadable = calls.filter(~readable).height + ranges.filter(~readable).height
        calls, ranges = calls.filter(readable), ranges.filter(readable)
        calls = calls.filter(pl.col("correlation_id").is_between(0, CORRELATION_LIMIT - 1))
        if unreadable:
            notes.append(f"{unreadable} CPU event(s) without a readable ts, pid or tid are left out")
        if ranges.is_empty():
            notes.append(
                "the trace holds no user_annotation events (torch.profiler.record_function ranges), so its GPU work "
                "belongs to no stage; wrap the stages in record_function (PyTorch before 1.10 wrote them as "
                "'Operator' events)"
            )
        uncorrelated = ops["correlation_id"].null_count()
        if uncorrelated:
            notes.append(f"{uncorrelated} GPU operation(s) carry no correlation id: they belong to no range")
        shared = calls["correlation_id"].is_duplicated().sum()
        if shared:
            notes.append(
                f"{shared} launching calls share their correlation id with another (several processes in one "
                "file?): an operation is tied to the first of them"
            )
        gpus = _gpus(header.get("deviceProperties"))
        if gpus.is_empty():
            notes.append("the trace has no deviceProperties: GPU names and SM counts are unknown")
        details = _details(header)
        return Trace(
            path=path,
            format=FORMAT,
            tool_version=details.get("schema_version", "unknown"),
            origin=_origin(details),
            ranges=_ranges(ranges, op_ranges),
            ops=HeldOps(_with_calls(ops, calls)),
            names=self.names.select("name_id", "name"),
            gpus=gpus,
            processes=_processes(processes, pl.concat([calls["pid"], ranges["pid"]]).unique()),
            details=details,
            notes=tuple(notes),
        )


def _with_calls(ops: pl.DataFrame, calls: pl.DataFrame) -> pl.DataFrame:
    """The operations in the contract's schema, each with its launching call's times, process and thread."""
    corr = ops["correlation_id"].fill_null(-1).to_numpy()
    corr = np.where(corr < CORRELATION_LIMIT, corr, -1)
    call_corr = calls["correlation_id"].to_numpy()
    rows = match_calls(np.zeros(len(corr), np.int64), corr, np.zeros(len(call_corr), np.int64), call_corr)
    index = pl.Series(rows).replace(-1, None)
    return ops.with_columns(
        calls.select(
            pl.col("start").gather(index).alias("call_start"),
            pl.col("end").gather(index).alias("call_end"),
            pl.col("pid").gather(index),
            pl.col("tid").gather(index),
        )
    ).select([pl.col(c).cast(t) for c, t in OPS_SCHEMA.items()])


def _ranges(ranges: pl.DataFrame, op_ranges: pl.DataFrame) -> pl.DataFrame:
    """Stage ranges then op ranges, numbered in that order: record_function nests on its thread (push/pop)."""
    both = pl.concat([ranges, op_ranges.filter(pl.all_horizontal(pl.col("start", "pid", "tid").is_not_null()))])
    return both.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("range_id"),
        pl.lit("").alias("domain"),
        pl.col("name").fill_null(""),
        pl.lit("PushPop").alias("style"),
        "start",
        "end",
        "pid",
        "tid",
        pl.lit(None, pl.Int64).alias("end_tid"),
    ).cast(RANGES_SCHEMA)


def _gpus(devices: object) -> pl.DataFrame:
    """``deviceProperties`` as the contract's GPUs (Kineto records no clock); entries of another shape are skipped."""
    rows = []
    for d in devices if isinstance(devices, list) else []:
        if isinstance(d, dict) and type(d.get("id")) is int:
            name, sms = d.get("name"), d.get("numSms")
            rows.append((d["id"], name if isinstance(name, str) else None, sms if type(sms) is int else None, None))
    return pl.DataFrame(rows, schema=GPUS_SCHEMA, orient="row").unique("id", keep="first", maintain_order=True)


def _processes(named: pl.DataFrame, pids: pl.Series) -> pl.DataFrame:
    """The processes that ran ranges or launching calls, named by their ``process_name`` events."""
    known = named.filter(pl.col("pid").is_in(pids.implode())).unique("pid", keep="first", maintain_order=True)
    return known.select(list(PROCESSES_SCHEMA)).cast(PROCESSES_SCHEMA)


def _details(header: dict[str, Any]) -> dict[str, str]:
    """What the trace says of its origin, as short texts (``schema_version``, ``rank``, ``world_size``, ...)."""
    dist = header.get("distributedInfo")
    pairs = [(DETAILS[k], header.get(k)) for k in DETAILS]
    pairs += [(DISTRIBUTED[k], dist.get(k)) for k in DISTRIBUTED] if isinstance(dist, dict) else []
    return {name: str(v)[:80] for name, v in pairs if isinstance(v, (int, str)) and not isinstance(v, bool)}


def _origin(details: dict[str, str]) -> str:
    """For headers: ``torch.profiler (Kineto) trace, schema 1, CUPTI 130001, rank 0 of 8``."""
    parts = ["torch.profiler (Kineto) trace"]
    if "schema_version" in details:
        parts.append(f"schema {details['schema_version']}")
    if "cupti_version" in details:
        parts.append(f"CUPTI {details['cupti_version']}")
    if "rank" in details:
        parts.append(f"rank {details['rank']}" + (f" of {details['world_size']}" if "world_size" in details else ""))
    return ", ".join(parts)
