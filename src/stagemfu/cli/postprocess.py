"""``stagemfu postprocess``: per-stage GPU times of one nsys trace, or of many compared."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from stagemfu.cli import FORMATS, check_files, format_option, launches_option, output_option, render
from stagemfu.cli.outputs import files_read
from stagemfu.cli.view_options import top_kernels_option, view_options
from stagemfu.postprocess.many import DEFAULT_THRESHOLD, SPREAD_METRICS
from stagemfu.postprocess.trace import Progress
from stagemfu.report.render.postprocess_data import MANY_TABLES, TABLES

if TYPE_CHECKING:
    from stagemfu.postprocess import CombinedTimes, StageTimes
    from stagemfu.report.render.view import TableView

PROGRESS_DELAY_S = 1.0  # loads shorter than this draw no progress bar
MAX_CHUNK_OPS = 10**12  # more operations than any export holds: one chunk
SCHEDULER_ADDRESS = re.compile(
    r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:(?:[\w\-]{1,63}\.)*[\w\-]{1,63}|\[[0-9a-fA-F:]{2,39}\]):(\d{1,5})"
)


@click.command()
@click.argument("traces", metavar="TRACE...", nargs=-1, required=True)
@click.option(
    "--within",
    metavar="NAME",
    default=None,
    help="Keep only range instances nested in a range called NAME (e.g. measured, to leave "
    "out the warm-up), plus those NAME ranges. NAME or DOMAIN:NAME, or a shell pattern ('step*').",
)
@click.option(
    "--range",
    "range_names",
    metavar="NAME",
    multiple=True,
    help="Report only ranges called NAME (repeatable). NAME or DOMAIN:NAME, or a shell pattern ('aten::*mm*').",
)
@top_kernels_option(5, "Kernels listed per stage (in every format).")
@view_options(full_names=True)
@click.option(
    "--categories",
    type=click.Path(path_type=Path),
    default=None,
    help="CSV of extra kernel category rules (header category,pattern; pattern is a "
    "case-insensitive regular expression), tried before the built-in table.",
)
@click.option(
    "--table",
    "table_name",
    type=click.Choice([*TABLES, *MANY_TABLES]),
    default="ranges",
    show_default=True,
    help="Which table --format csv writes. With several traces: combined, stragglers, or any "
    "per-trace table stacked with a trace column.",
)
@launches_option
@click.option("--instances", is_flag=True, help="Include one row per range instance in the JSON output.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Several traces: Dask worker processes on this machine (default: one per trace, up to the "
    "number of cores, when Dask is installed; 1 loads them one after the other without Dask).",
)
@click.option(
    "--scheduler",
    metavar="ADDR",
    default=None,
    callback=lambda _ctx, _param, value: _scheduler(value),
    help="Several traces: load them on the workers of a running Dask cluster (tcp://host:8786); the "
    "workers must see the same paths.",
)
@click.option(
    "--straggler-metric",
    type=click.Choice([m.removesuffix("_ns") for m in SPREAD_METRICS]),
    default="busy",
    show_default=True,
    help="Several traces: the stage time the straggler view compares across traces.",
)
@click.option(
    "--straggler-threshold",
    type=click.FloatRange(min=0),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Several traces: a trace straggles on a stage when its time exceeds the median over the "
    "traces by more than this fraction.",
)
@click.option(
    "--chunk-ops",
    metavar="N|auto",
    default="auto",
    show_default=True,
    callback=lambda _ctx, _param, value: _chunk_ops(value),
    help="Read and attribute GPU operations in time-ordered chunks of about N, so memory stays bounded "
    "on exports of tens of millions of kernels (the same numbers, and faster: 10.5M kernels took 4.5 s "
    "in 789 MiB on 16 cores, 7.3 s in 3.5 GiB at once). Several chunks are read and attributed at once "
    "where there are cores (6 from 16 cores). 0: all at once; auto: above 2M operations, chunks of 1M "
    "divided by the chunks at once (500k up to 7 cores, 166k from 16). torch.profiler traces are held "
    "in memory (about 80 bytes per operation).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (it appears on a terminal for loads over a second).")
@format_option(
    (*FORMATS, "sqlite"),
    help="table: rich terminal tables; json: the stagemfu.postprocess/1 document; "
    "csv: one table (see --table); md: every table as Markdown; sqlite: every table, typed, in the "
    "database -o names (for sqlite-utils and Datasette).",
)
@output_option
def postprocess(
    traces: tuple[str, ...],
    within: str | None,
    range_names: tuple[str, ...],
    top: int,
    view: TableView,
    categories: Path | None,
    table_name: str,
    launches: str,
    instances: bool,
    jobs: int | None,
    scheduler: str | None,
    straggler_metric: str,
    straggler_threshold: float,
    chunk_ops: int | Literal["auto"] | None,
    quiet: bool,
    fmt: str,
    output: Path | None,
) -> None:
    """Per-stage GPU times of an nsys or torch.profiler trace, or of several traces compared.

    TRACE is an nsys SQLite export (also .xz/.gz/.bz2 compressed), or an .nsys-rep/.qdrep report,
    exported first with the nsys found in $NSYS, on PATH or under /opt/nvidia/nsight-systems; or
    a torch.profiler (Kineto) Chrome-trace JSON (also compressed), whose record_function ranges
    are the stages. The format is recognised from the content.

    Several TRACEs, a directory of traces or a glob pattern (one trace per rank, run or node):
    each trace's stage tables, a combined table (sums, and per-trace min/median/max) and the
    stragglers (traces whose stage time exceeds the median by more than a threshold). The traces
    load in parallel on Dask when it is installed (--jobs, --scheduler), else one after the other.

    \b
    Per NVTX range (aggregated by name and by nesting path):
      wall    CPU time of the range (end - start)
      span    first GPU op start to last GPU op end (nsys "projected time")
      busy    union of the GPU op intervals: time the GPU was working for the range
      kernel  sum of kernel durations (overlapping kernels count twice)
      idle % of span  1 - busy/span: the GPU waiting inside the stage
    A GPU op (kernel, memcpy, memset) belongs to a range when the CUDA call that launched it lies
    inside the range on the same thread, and to every range around that one (see --launches for
    work that frameworks launch from other threads).

    The terminal and Markdown show each table sorted by busy time and cut to --top rows,
    fitted to the terminal's width; PyTorch emit_nvtx ranges are grouped by operator there
    (--full-names for every call). JSON, CSV and SQLite hold every row and full name.

    \b
    Examples:
      stagemfu postprocess run.sqlite --within measured
      stagemfu postprocess run.nsys-rep --format json -o times.json
      stagemfu postprocess run.sqlite --format csv --table kernels --top-kernels 20
      stagemfu postprocess torch_emit_nvtx.sqlite --top 40 --base kernel,wall
      stagemfu postprocess 'ranks/*.sqlite' --jobs 8 --straggler-threshold 0.05
    """
    from stagemfu import postprocess as pp
    from stagemfu.postprocess.many import expand_inputs

    options = {
        "within": within,
        "ranges": range_names,
        "categories": categories,
        "chunk_ops": chunk_ops,
        "launches": launches,
    }
    paths = expand_inputs(traces)
    check_files(inputs={"TRACE": paths, "--categories": categories}, outputs={"-o": output})
    if len(paths) > 1 or len(traces) > 1:
        with progress_bar(quiet) as progress:
            ct = pp.load_many(
                paths,
                **options,
                jobs=jobs,
                scheduler=scheduler,
                metric=f"{straggler_metric}_ns",
                threshold=straggler_threshold,
                progress=progress,
            )
        if fmt == "sqlite":
            from stagemfu.report.render import postprocess_many as many
            from stagemfu.report.render.sqlite import write_sqlite

            write_sqlite(output, many.many_tables(ct, top=top), many.many_meta(ct), inputs=[*paths, *files_read()])
            return
        _show_many(ct, fmt=fmt, table_name=table_name, top=top, view=view, output=output)
        return
    if table_name in MANY_TABLES:
        raise click.UsageError(f"--table {table_name} needs several traces; give more than one TRACE")
    with progress_bar(quiet) as progress:
        st = pp.load(paths[0], **options, progress=progress)
    if fmt == "sqlite":
        from stagemfu.report.render import postprocess_data as data
        from stagemfu.report.render.sqlite import write_sqlite

        tables, meta = data.postprocess_tables(st, top=top), data.postprocess_meta(st)
        write_sqlite(output, tables, meta, inputs=[*paths, *files_read()])
        return
    _show_one(st, fmt=fmt, table_name=table_name, top=top, view=view, instances=instances, output=output)


def _chunk_ops(value: str) -> int | Literal["auto"] | None:
    if value == "auto":
        return "auto"
    try:
        number = int(value) if len(value) <= len(str(MAX_CHUNK_OPS)) else -1
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_CHUNK_OPS:
        shown = value if len(value) <= 24 else value[:20] + "…"
        raise click.BadParameter(f"{shown!r} is not a number of operations from 0 to {MAX_CHUNK_OPS:,}, or auto")
    return number  # 0: all at once (the nsys reader takes 0 as None)


def _scheduler(value: str | None) -> str | None:
    """A Dask scheduler address, ``[tcp|tls|ucx|ws|wss://]host:port``, checked before Dask sees it."""
    match = SCHEDULER_ADDRESS.fullmatch(value) if value is not None and len(value) <= 300 else None
    if value is not None and (match is None or not 0 < int(match.group(1)) < 65536):
        shown = value if len(value) <= 60 else value[:57] + "…"
        raise click.BadParameter(f"{shown!r} is not a Dask scheduler address such as tcp://host:8786")
    return value


def _show_one(
    st: StageTimes, *, fmt: str, table_name: str, top: int, view: TableView, instances: bool, output: Path | None
) -> None:
    from stagemfu.report.render import postprocess_data
    from stagemfu.report.render.csv import csv_text
    from stagemfu.report.render.json_stream import json_chunks

    def views():  # they draw with rich: imported only for the formats that use them (start-up time)
        from stagemfu.report.render import postprocess_view

        return postprocess_view

    writers = {
        "table": lambda t: views().terminal_view(t, top=top, view=view),
        "json": lambda t: json_chunks(postprocess_data.postprocess_document(t, top=top, instances=instances)),
        "csv": lambda t: csv_text(postprocess_data.table(t, table_name, top=top)),
        "md": lambda t: views().markdown_view(t, top=top, view=view),
    }
    render(st, fmt, output, writers)


def _show_many(ct: CombinedTimes, *, fmt: str, table_name: str, top: int, view: TableView, output: Path | None) -> None:
    from stagemfu.report.render import postprocess_many
    from stagemfu.report.render.csv import csv_text
    from stagemfu.report.render.json_stream import json_chunks

    writers = {
        "table": lambda c: postprocess_many.terminal_view(c, view=view),
        "json": lambda c: json_chunks(postprocess_many.many_document(c, top=top)),
        "csv": lambda c: csv_text(postprocess_many.many_table(c, table_name, top=top)),
        "md": lambda c: postprocess_many.markdown_view(c, view=view),
    }
    render(ct, fmt, output, writers)


@contextmanager
def progress_bar(quiet: bool, *, force: bool = False) -> Iterator[Progress | None]:
    """A progress callback drawing a rich bar on stderr once a load has run for a second.

    Nothing is drawn with ``quiet``, when stderr is not a terminal (unless ``force``), or when
    the load ends within the delay. The bar is transient: it disappears when the load ends.
    """
    if quiet or not (force or sys.stderr.isatty()):  # decided before rich is imported: start-up time
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, force_terminal=force or None)
    if not console.is_terminal:
        yield None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True)
    task = bar.add_task("loading", total=None)
    lock = threading.Lock()

    def update(what: str, done: int, total: int) -> None:
        with lock:
            bar.update(task, description=what, completed=done, total=total)

    timer = threading.Timer(PROGRESS_DELAY_S, bar.start)
    timer.start()
    try:
        yield update
    finally:
        timer.cancel()
        bar.stop()
