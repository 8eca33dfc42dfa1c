"""``stagemfu postprocess``: per-stage GPU times of one nsys trace."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stagemfu.cli import emit, format_option, output_option, print_rich
from stagemfu.report.render.postprocess_data import TABLES


@click.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "--within",
    metavar="NAME",
    default=None,
    help="Keep only range instances nested in a range called NAME (e.g. measured, to leave "
    "out the warm-up), plus those NAME ranges. NAME or DOMAIN:NAME.",
)
@click.option(
    "--range",
    "range_names",
    metavar="NAME",
    multiple=True,
    help="Report only ranges called NAME (repeatable). NAME or DOMAIN:NAME.",
)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Kernels listed per stage.")
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
    type=click.Choice(TABLES),
    default="ranges",
    show_default=True,
    help="Which table --format csv writes.",
)
@click.option("--instances", is_flag=True, help="Include one row per range instance in the JSON output.")
@format_option
@output_option
def postprocess(
    trace: Path,
    within: str | None,
    range_names: tuple[str, ...],
    top: int,
    categories: Path | None,
    table_name: str,
    instances: bool,
    fmt: str,
    output: Path | None,
) -> None:
    """Per-stage GPU times of an nsys trace.

    TRACE is an nsys SQLite export (also .xz/.gz/.bz2 compressed), or an .nsys-rep/.qdrep report,
    exported first with the nsys found in $NSYS, on PATH or under /opt/nvidia/nsight-systems.

    \b
    Per NVTX range (aggregated by name and by nesting path):
      wall    CPU time of the range (end - start)
      span    first GPU op start to last GPU op end (nsys "projected time")
      busy    union of the GPU op intervals: time the GPU was working for the range
      kernel  sum of kernel durations (overlapping kernels count twice)
      idle %  1 - busy/span: the GPU waiting inside the stage
    A GPU op (kernel, memcpy, memset) belongs to a range when the CUDA call that launched it lies
    inside the range on the same thread, and to every range around that one.

    \b
    Examples:
      stagemfu postprocess run.sqlite --within measured
      stagemfu postprocess run.nsys-rep --format json -o times.json
      stagemfu postprocess run.sqlite --format csv --table kernels --top 20
    """
    from stagemfu import postprocess as pp
    from stagemfu.report.render import postprocess_data, postprocess_view

    st = pp.load(trace, within=within, ranges=range_names, categories=categories)
    if fmt == "json":
        doc = postprocess_data.postprocess_document(st, top=top, instances=instances)
        emit(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", output)
    elif fmt == "csv":
        emit(postprocess_data.table(st, table_name, top=top).write_csv(), output)
    elif fmt == "md":
        emit(postprocess_view.markdown_view(st, top=top), output)
    else:
        print_rich(postprocess_view.terminal_view(st, top=top), output)
