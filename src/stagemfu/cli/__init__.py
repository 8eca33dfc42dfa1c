"""The ``stagemfu`` command line: options in, one library call, rendered result out.

This module holds the group, the shared options and the output helpers; each command lives in
its own module beside it (``postprocess.py``, ...) and is registered in :func:`_register_commands`.

User mistakes surface as :class:`stagemfu.errors.StagemfuError`; the group turns each into one
line on stderr and exit status 2 (exit 1 is kept for a failed child command in ``collect``).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stagemfu import __version__
from stagemfu.errors import StagemfuError

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


def emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserInputError(f"{output}: cannot write ({err.strerror})") from err


def print_rich(renderable: Any, output: Path | None) -> None:
    from rich.console import Console

    if output is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # a pipe or a log: no width to fit, print the tables whole
            console = Console(highlight=False, width=PIPE_WIDTH)
        console.print(renderable)
        return
    console = Console(record=True, width=PIPE_WIDTH, highlight=False, file=io.StringIO())
    console.print(renderable)
    emit(console.export_text(), output)


def _register_commands() -> None:
    """One module per command under ``stagemfu.cli``; each defines one click command."""
    from stagemfu.cli.analyze import analyze
    from stagemfu.cli.collect import collect, run
    from stagemfu.cli.postprocess import postprocess
    from stagemfu.cli.report import calibrate, compare, report

    for command in (postprocess, report, compare, calibrate, collect, run, analyze):
        cli.add_command(command)


_register_commands()


def main() -> None:
    cli(prog_name="stagemfu")


if __name__ == "__main__":
    main()
