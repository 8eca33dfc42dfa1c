"""The ``stagemfu`` command line: options in, one library call, rendered result out.

This module holds the group, the shared options and the output helpers; each command lives in
its own module beside it (``postprocess.py``, ...), named in :data:`COMMANDS` and imported only
when that command runs or shows its help: ``stagemfu --help`` loads none of them, and
``stagemfu postprocess`` never loads the model code (start-up time, docs/benchmarks.md).

User mistakes surface as :class:`stagemfu.errors.StagemfuError`; the group turns each into one
line on stderr and exit status 2 (exit 1 is kept for a failed child command in ``collect``).
"""

from __future__ import annotations

import importlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from stagemfu import __version__
from stagemfu.cli.outputs import (
    PIPE_CLOSED_STATUS,
    StdoutClosed,
    check_files,
    emit,
    guarded_stdout,
    recording_reads,
    terminating_on_sigterm,
)
from stagemfu.errors import StagemfuError

__all__ = ["check_files", "cli", "emit", "main", "peak_options", "print_rich", "render"]

FORMATS = ("table", "json", "csv", "md")
PIPE_WIDTH = 160  # columns for tables written to a file or pipe
# Command -> (module:function, its one-line help for `stagemfu --help`, which lists the commands
# without importing them; tests/test_startup.py keeps each line equal to the command's own).
COMMANDS = {
    "analyze": (
        "stagemfu.cli.analyze:analyze",
        "FLOPs, bytes and parameters per stage of MODEL for one generate() call.",
    ),
    "calibrate": (
        "stagemfu.cli.report:calibrate",
        "Prove the report's MFU on bf16 GEMMs of known FLOPs (needs a GPU and nsys).",
    ),
    "cache": ("stagemfu.cli.cache:cache", "The cache of decompressed and exported traces."),
    "collect": (
        "stagemfu.cli.collect:collect",
        "Run COMMAND under nsys, export the trace to SQLite and show its per-stage GPU times.",
    ),
    "compare": (
        "stagemfu.cli.report:compare",
        "Two reports side by side: time and MFU per stage on each base, and the kernels that changed most.",
    ),
    "postprocess": (
        "stagemfu.cli.postprocess:postprocess",
        "Per-stage GPU times of an nsys or torch.profiler trace, or of several traces compared.",
    ),
    "report": ("stagemfu.cli.report:report", "MFU and MBU per stage of an nsys or torch.profiler trace."),
    "run": ("stagemfu.cli.collect:run", "Profile a built-in model's generate under nsys and report each stage's MFU."),
}


class UserInputError(click.ClickException):
    """A user mistake: printed as one ``Error: ...`` line, exit status 2."""

    exit_code = 2


class StagemfuGroup(click.Group):
    """Translates errors into one stderr line and an exit status, once, for every command.

    Library errors (:class:`StagemfuError`) and click's usage errors (unknown option, bad
    value) both exit 2 with a single ``Error: ...`` line; click would otherwise print a usage
    block first. While a command runs, standard output failures are one line too (a closed pipe
    exits quietly with 141), SIGTERM cleans up like Ctrl-C, and the files it reads are recorded
    so that no output replaces one (:mod:`stagemfu.cli.outputs`).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StagemfuError as err:
            raise UserInputError(str(err)) from err

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command, its module imported on first use."""
        if name in COMMANDS and name not in self.commands:
            module, function = COMMANDS[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), function), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from :data:`COMMANDS` (no command module is imported): each
        line is cut to the width as click cuts a command's own help."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(n, click.Command(n, help=COMMANDS[n][1]).get_short_help_str(limit)) for n in names if n in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            with guarded_stdout(), recording_reads(), terminating_on_sigterm():
                status = super().main(*args, **kwargs)
                sys.stdout.flush()
        except StdoutClosed:
            sys.exit(PIPE_CLOSED_STATUS)
        except StagemfuError as err:  # raised outside a command: standard output failing under --help
            click.echo(f"Error: {err}", err=True)
            sys.exit(UserInputError.exit_code)
        except click.ClickException as err:
            message = " ".join(err.format_message().split())
            click.echo(f"Error: {message}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


def format_option(choices: Sequence[str], help: str) -> Callable[[Callable], Callable]:
    """``--format``: one spelling for every command; each names its formats and what they write."""
    return click.option("--format", "fmt", type=click.Choice(choices), default="table", show_default=True, help=help)


def launches_option(fn: Callable) -> Callable:
    """``--launches``: which ranges a GPU operation belongs to; shared by postprocess and report."""
    from stagemfu.postprocess.attribution import LAUNCH_RULES  # the commands using it load postprocess anyway

    return click.option(
        "--launches",
        type=click.Choice(LAUNCH_RULES),
        default="thread",
        show_default=True,
        help="thread: an operation belongs to the ranges open on the thread that launched it, as in nsys. "
        "process: an operation launched off its process's main thread (PyTorch runs backward on its "
        "autograd thread) also belongs to the ranges open on the main thread when it was launched.",
    )(fn)


def output_option(fn: Callable) -> Callable:
    return click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write to this file instead of standard output (whole or not at all; never over one of the inputs).",
    )(fn)


def input_options(*, from_trace: bool = False) -> Callable[[Callable], Callable]:
    """The analyzer's model and input options (:func:`stagemfu.models.options.input_options`, which
    ``stagemfu run`` shares) plus ``--counters``.

    With ``from_trace`` (``report``) every input defaults to the trace's shapes.json, and
    ``--dtype`` is left to ``report``'s peak options, where it also picks the peak.
    """
    from stagemfu.models.options import input_options as model_input_options

    inputs = model_input_options(from_trace=from_trace, dtype=not from_trace)
    counters = click.option(
        "--counters",
        default=None,
        help="Comma-separated FLOP counters to run (analytic, torch, fvcore); a counter named here must run. "
        "[default: all three; torch and fvcore, which need stagemfu[model], are skipped with a note when "
        "missing] analytic alone skips the model build (fastest).",
    )
    return lambda fn: inputs(counters(fn))


def peak_options(*, dtype: bool = True) -> Callable[[Callable], Callable]:
    """``--gpu``, ``--dtype``, ``--peak-tflops``, ``--peak-bandwidth``: what MFU, MBU and the roofline divide by.

    Without ``dtype`` (``analyze``, whose input options hold ``--dtype``) the dtype option is left out.
    """
    from stagemfu.models.shapes import DTYPES  # the commands using it load the models package anyway

    options = [
        click.option(
            "--gpu",
            metavar="NAME",
            default=None,
            help="GPU to take the peak of, as CUDA names it ('NVIDIA H100 80GB HBM3') or as the peak table "
            "does ('H100 SXM5', 'H200'); by default the trace's (TARGET_INFO_GPU).",
        ),
        click.option(
            "--peak-tflops",
            type=float,
            envvar="STAGEMFU_PEAK_TFLOPS",
            default=None,
            help="Peak dense TFLOP/s to divide by instead of the table's [env STAGEMFU_PEAK_TFLOPS].",
        ),
        click.option(
            "--peak-bandwidth",
            "peak_bandwidth",
            type=float,
            envvar="STAGEMFU_PEAK_BANDWIDTH",
            metavar="GB/S",
            default=None,
            help="Peak memory bandwidth in GB/s for MBU and the roofline [env STAGEMFU_PEAK_BANDWIDTH].",
        ),
    ]
    if dtype:
        options.insert(
            1,
            click.option(
                "--dtype",
                type=click.Choice(DTYPES),
                default=None,
                help="Precision of the peak and of the analyzer's count; by default the FLOPs' dtype (bf16 when "
                "unstated).",
            ),
        )

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def counter_names(counters: str | None) -> tuple[str, ...] | None:
    """``--counters`` split into names: ``"analytic, torch"`` -> ``("analytic", "torch")``; None when not given."""
    return None if counters is None else tuple(c.strip() for c in counters.split(",") if c.strip())


@click.group(cls=StagemfuGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stagemfu")
def cli() -> None:
    """How well each stage of a model uses the GPU, from Nsight Systems or torch.profiler traces.

    Stages are NVTX ranges (record_function ranges in torch.profiler traces). For every range
    stagemfu reports wall time (CPU time of the range), span (first to last GPU operation it
    launched, = nsys "projected" time), busy (time the GPU ran at least one of its operations)
    and kernel time (sum of kernel durations).

    \b
    Environment:
      NSYS                   the nsys executable (else PATH, /opt/nvidia, CUDA installs)
      XDG_CACHE_HOME         the trace cache goes to $XDG_CACHE_HOME/stagemfu (see `stagemfu cache`)
      STAGEMFU_CACHE_SIZE    bound of the trace cache (default 20G)
      STAGEMFU_NSYS_TIMEOUT  seconds an nsys export may run (default 3600; 0: no limit)
      STAGEMFU_PEAK_TFLOPS, STAGEMFU_PEAK_BANDWIDTH  peak overrides (see `stagemfu report`)
    """
    from stagemfu.heap import return_large_blocks

    return_large_blocks()


def print_rich(renderable: Any, output: Path | None) -> None:
    """Print a rich renderable to standard output (fitted to a terminal) or, as plain text, to ``output``."""
    from rich.console import Console

    if output is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # a pipe or a log: no width to fit, print the tables whole
            console = Console(highlight=False, width=PIPE_WIDTH)
        console.print(renderable)
        sys.stdout.flush()
        return
    console = Console(record=True, width=PIPE_WIDTH, highlight=False, file=io.StringIO())
    console.print(renderable)
    emit(console.export_text(), output)


def json_text(document: object) -> str:
    """A JSON document as every command writes it: indented, non-ASCII kept, one final newline.

    A lone surrogate (a byte of a file name that is not UTF-8, as Python decodes it) is written as
    its JSON escape (``\\udcff``): the text encodes as UTF-8 and parses back to the same string.
    """
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def render(result: Any, fmt: str, output: Path | None, writers: dict[str, Callable[[Any], Any]]) -> None:
    """Write ``result`` in ``fmt`` to ``output`` (standard output when None).

    ``writers`` maps each format a command offers to its renderer: ``"table"``'s returns a rich
    renderable, every other one the text to write (or its UTF-8 chunks, see :func:`emit`).
    """
    write = writers[fmt]
    if fmt == "table":
        print_rich(write(result), output)
    else:
        emit(write(result), output)


def main() -> None:
    cli(prog_name="stagemfu")


if __name__ == "__main__":
    main()
