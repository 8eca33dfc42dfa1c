"""The ``stagemfu`` command line: options in, one library call, rendered result out.

User mistakes surface as :class:`stagemfu.errors.StagemfuError`; the group turns each into one
line on stderr and exit status 2 (exit 1 is kept for a failed child command in ``collect``).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stagemfu import __version__
from stagemfu.errors import StagemfuError
from stagemfu.report.render.postprocess_data import TABLES

FORMATS = ("table", "json", "csv", "md")
PIPE_WIDTH = 160  # columns for tables written to a file or pipe


class UserInputError(click.ClickException):
    """A user mistake: printed as one ``Error: ...`` line, exit status 2."""

    exit_code = 2


class StagemfuGroup(click.Group):
    """Translates errors into one stderr line and an exit status, once, for every command.

    Library errors (:class:`StagemfuError`) and click's usage errors (unknown option, bad
    value) both exit 2 with a single ``Error: ...`` line; click would otherwise print a usage
    block first.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StagemfuError as err:
            raise UserInputError(str(err)) from err

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            status = super().main(*args, **kwargs)
        except click.ClickException as err:
            message = " ".join(err.format_message().split())
            click.echo(f"Error: {message}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


def format_option(fn: Callable) -> Callable:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table: rich terminal tables; json: the stagemfu.postprocess/1 document; "
        "csv: one table (see --table); md: every table as Markdown.",
    )(fn)


def output_option(fn: Callable) -> Callable:
    return click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write to this file instead of standard output.",
    )(fn)


@click.group(cls=StagemfuGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stagemfu")
def cli() -> None:
    """How well each stage of a model uses the GPU, from Nsight Systems traces.

    Stages are NVTX ranges. For every range stagemfu reports wall time (CPU time of the range),
    span (first to last GPU operation it launched, = nsys "projected" time), busy (time the GPU
    ran at least one of its operations) and kernel time (sum of kernel durations).
    """


@cli.command()
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
        _emit(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", output)
    elif fmt == "csv":
        _emit(postprocess_data.table(st, table_name, top=top).write_csv(), output)
    elif fmt == "md":
        _emit(postprocess_view.markdown_view(st, top=top), output)
    else:
        _print_rich(postprocess_view.terminal_view(st, top=top), output)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserInputError(f"{output}: cannot write ({err.strerror})") from err


def _print_rich(renderable: Any, output: Path | None) -> None:
    from rich.console import Console

    if output is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # a pipe or a log: no width to fit, print the tables whole
            console = Console(highlight=False, width=PIPE_WIDTH)
        console.print(renderable)
        return
    console = Console(record=True, width=PIPE_WIDTH, highlight=False, file=io.StringIO())
    console.print(renderable)
    _emit(console.export_text(), output)


def main() -> None:
    cli(prog_name="stagemfu")


if __name__ == "__main__":
    main()
