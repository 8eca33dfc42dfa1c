"""``stagemfu report``: MFU and MBU per stage of one nsys trace, joined with FLOPs per stage."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stagemfu.cli import (
    check_files,
    counter_names,
    emit,
    format_option,
    input_options,
    json_text,
    launches_option,
    output_option,
    peak_options,
    render,
)
from stagemfu.cli.outputs import files_read
from stagemfu.cli.view_options import top_kernels_option, view_options
from stagemfu.report.render.view import DEFAULT_VIEW

if TYPE_CHECKING:
    from stagemfu.models import Inputs
    from stagemfu.report import MfuReport
    from stagemfu.report.compare import ReportSide
    from stagemfu.report.render.view import TableView

REPORT_FORMATS = ("table", "json", "csv", "md", "html", "sqlite")
REPORT_TABLES = ("stages", "decode_steps", "timeline", "kernels", "categories", "uncounted_ops")
CALIBRATION_FAILED = 3  # exit status of a calibration whose MFUs disagree
COMPARE_KERNELS = 50  # kernels kept per stage of a trace compared on the spot


def within_options(fn: Callable) -> Callable:
    fn = launches_option(fn)
    fn = click.option(
        "--all-instances", is_flag=True, help="Keep every range instance even when a 'measured' range exists."
    )(fn)
    return click.option(
        "--within",
        metavar="NAME",
        default=None,
        help="Keep only range instances nested in a range called NAME (or matching a shell pattern); by "
        "default 'measured' when the trace has it (the timed repetition, leaving out the warm-up).",
    )(fn)


def flops_options(fn: Callable) -> Callable:
    """Where FLOPs come from: ``--flops FILE``, ``--op-flops``, or ``--model`` with the analyzer's input options."""
    fn = input_options(from_trace=True)(fn)
    fn = click.option("--model", default=None, help="Count FLOPs with the analyzer for this preset or HF config.")(fn)
    fn = click.option(
        "--op-flops",
        is_flag=True,
        help="Count FLOPs from the op ranges torch.autograd.profiler.emit_nvtx(record_shapes=True) left in the "
        "trace (or the ops of a torch.profiler trace recorded with record_shapes=True): each stage covers its "
        "instances holding op ranges, and work of other threads (backward) counts for the main thread's open "
        "stages, as with --launches process.",
    )(fn)
    return click.option(
        "--flops",
        "flops_file",
        type=click.Path(path_type=Path),
        default=None,
        help="FLOPs per stage: the analyzer's JSON, or a JSON/YAML mapping stage -> FLOPs "
        "(or {flops, bytes, instances}); a stage may be a shell pattern ('aten::linear*') summing the ranges "
        "it matches.",
    )(fn)


@click.command()
@click.argument("trace", type=click.Path(path_type=Path), required=False)
@flops_options
@within_options
@peak_options()
@top_kernels_option(5, "Kernels listed per stage (in every format).")
@view_options()
@format_option(
    REPORT_FORMATS,
    help="table: rich terminal tables; json: the stagemfu.report/1 document; csv: one table (see --table); "
    "md: Markdown; html: one self-contained page; sqlite: every table, typed, in the database -o names "
    "(for sqlite-utils and Datasette).",
)
@click.option(
    "--table",
    "table_name",
    type=click.Choice(REPORT_TABLES),
    default="stages",
    show_default=True,
    help="Which table --format csv writes.",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the HTML page to this file (the chosen --format still prints).",
)
@output_option
def report(
    trace: Path | None,
    flops_file: Path | None,
    op_flops: bool,
    model: str | None,
    config: Path | None,
    mode: str | None,
    image_size: tuple[int, int] | None,
    crops: int | None,
    text_tokens: int | None,
    new_tokens: int | None,
    batch: int | None,
    full_logits: bool,
    counters: str | None,
    within: str | None,
    all_instances: bool,
    launches: str,
    gpu: str | None,
    dtype: str | None,
    peak_tflops: float | None,
    peak_bandwidth: float | None,
    top: int,
    view: TableView,
    fmt: str,
    table_name: str,
    html_file: Path | None,
    output: Path | None,
) -> None:
    """MFU and MBU per stage of an nsys or torch.profiler trace.

    TRACE is an nsys SQLite export (also compressed) or report, or a torch.profiler (Kineto)
    JSON trace. FLOPs per stage come from --flops FILE, from the op ranges of a trace recorded
    under emit_nvtx(record_shapes=True) or torch.profiler(record_shapes=True) (--op-flops),
    from the flops.json stagemfu.count_flops left beside the trace, or from the analyzer
    (--model, or the shapes.json `stagemfu run` left beside the trace); the first of these is
    used and the others are shown beside it. Without TRACE: the embedded real trace
    (DeepSeek-OCR-2 base, random weights, 8 new tokens, H100, nsys 2025.3.1).

    \b
    Per stage (NVTX range matched by name):
      MFU <base>  FLOPs / (time on that base x peak FLOP/s), on four bases:
                  kernel (sum of kernel durations), busy (GPU working for the stage),
                  span (first to last GPU op) and wall (CPU time of the range)
      MBU         bytes / (kernel time x peak bandwidth)
      idle % of span  1 - busy/span (the diagnosis uses the same share)
    Whole generation: prefill + decode (vision runs inside prefill: counted once).
    Latency: TTFT, TPOT p50/p90/p99, decode tokens/s on wall and GPU time.
    FLOPs whose instance counts do not fit the trace (--new-tokens 32 on an 8-token trace)
    stop the report (exit 2); warnings print first, notes last.

    \b
    Examples:
      stagemfu report --html report.html              (the embedded trace)
      stagemfu report run.sqlite --flops flops.yaml
      stagemfu report train.sqlite --op-flops          (any PyTorch program, no model config)
      stagemfu report run.sqlite --model deepseek-ocr2 --mode base --new-tokens 32 --html report.html
      stagemfu report run.sqlite --flops flops.json --gpu 'NVIDIA H100 80GB HBM3' --format json -o report.json
    """
    from stagemfu import report as rp
    from stagemfu.data import default_trace

    trace = default_trace() if trace is None else trace
    check_files(
        inputs={"TRACE": trace, "--flops": flops_file, "--config": config},
        outputs={"-o": output, "--html": html_file},
    )
    rep = rp.report(trace, top=top, **_report_options(locals()))
    if html_file is not None:
        emit(_html(rep), html_file, option="--html")
    if fmt == "sqlite":
        from stagemfu.report.render import report_data
        from stagemfu.report.render.sqlite import write_sqlite

        inputs = [trace, *([flops_file] if flops_file else []), *files_read()]
        write_sqlite(output, report_data.report_tables(rep), report_data.report_meta(rep), inputs=inputs)
        return
    render_report(rep, fmt, table_name, output, view=view)


def render_report(
    rep: MfuReport, fmt: str, table_name: str, output: Path | None, *, view: TableView = DEFAULT_VIEW
) -> None:
    """Write ``rep`` in one format to ``output`` (standard output when None)."""
    from stagemfu.report.render import report_data, report_view
    from stagemfu.report.render.csv import csv_text

    writers = {
        "table": lambda r: report_view.terminal_view(r, view=view),
        "json": lambda r: json_text(report_data.report_document(r)),
        "csv": lambda r: csv_text(report_data.table(r, table_name)),
        "md": lambda r: report_view.markdown_view(r, view=view),
        "html": _html,
    }
    render(rep, fmt, output, writers)


def _html(rep: MfuReport) -> str:
    from stagemfu.report.render.html import html_page

    return html_page(rep)


@click.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@flops_options
@within_options
@peak_options()
@top_kernels_option(10, "Kernels whose time changed most, listed.")
@view_options()
@format_option(
    ("table", "json", "md", "html"),
    help="table: rich terminal tables; json: the stagemfu.compare/1 document; md: Markdown; html: one page.",
)
@output_option
def compare(a: Path, b: Path, top: int, view: TableView, fmt: str, output: Path | None, **options: object) -> None:
    """Two reports side by side: time and MFU per stage on each base, and the kernels that changed most.

    A and B are each a `stagemfu report --format json` file or a trace (reported with the FLOPs
    options given, the same for both). Changes read as B against A.

    
    Examples:
      stagemfu compare before.json after.json
      stagemfu compare eager.sqlite graphs.sqlite --model deepseek-ocr2 --format html -o diff.html
    """
    from stagemfu.report.compare import compare_reports
    from stagemfu.report.render import compare_view
    from stagemfu.report.render.html import compare_page

    check_files(
        inputs={"A": a, "B": b, "--flops": options["flops_file"], "--config": options["config"]},
        outputs={"-o": output},
    )
    cmp = compare_reports(_side(a, options), _side(b, options), top=top)
    writers = {
        "table": lambda c: compare_view.terminal_view(c, view=view),
        "json": lambda c: json_text(compare_view.compare_document(c)),
        "md": lambda c: compare_view.markdown_view(c, view=view),
        "html": compare_page,
    }
    render(cmp, fmt, output, writers)


@click.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("calibration"),
    show_default=True,
    help="Directory for the trace, its export, run.json and the workload's events.json.",
)
@click.option(
    "--shapes",
    default=None,
    help="GEMM shapes, S or MxNxK, comma-separated (default: 6144³, 8192³, 8192x8192x2048).",
)
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Products per GEMM range (default 200).")
@click.option("--nsys", default=None, help="The nsys executable (default: $NSYS, PATH, /opt/nvidia).")
@click.option(
    "--check",
    nargs=2,
    type=click.Path(path_type=Path),
    metavar="TRACE EVENTS",
    default=None,
    help="Check an earlier recording (its trace and events.json) instead of running the workload; needs no GPU.",
)
@click.option("--gpu", metavar="NAME", default=None, help="GPU whose peak to use; by default the trace's.")
@click.option(
    "--peak-tflops", type=float, envvar="STAGEMFU_PEAK_TFLOPS", default=None, help="Peak to use instead of the table's."
)
@format_option(
    ("table", "json", "md"),
    help="table: terminal; json: the stagemfu.calibration/1 document; md: Markdown (for docs/).",
)
@output_option
@click.pass_context
def calibrate(
    ctx: click.Context,
    out_dir: Path,
    shapes: str | None,
    repeats: int | None,
    nsys: str | None,
    check: tuple[Path, Path] | None,
    gpu: str | None,
    peak_tflops: float | None,
    fmt: str,
    output: Path | None,
) -> None:
    """Prove the report's MFU on bf16 GEMMs of known FLOPs (needs a GPU and nsys).

    Runs `python -m stagemfu.report.calibrate_workload` under nsys: GEMMs of several shapes in NVTX
    ranges, each also timed with CUDA events. Passes when, for every GEMM, the report's kernel-time
    MFU is within 2 % of FLOPs / (event time x peak) and the achieved TFLOP/s are plausible (never
    above peak; the largest GEMM at 40 % of peak or more). Exit status 3 when it fails.

    \b
    Examples:
      stagemfu calibrate --out calibration --format md -o docs/calibration-h100.md
      stagemfu calibrate --check calibration/calibration.sqlite calibration/events.json
    """
    from stagemfu.report.calibrate import check_calibration, run_calibration
    from stagemfu.report.render import calibration_view

    check_files(inputs={"--check": check}, outputs={"-o": output})
    if check is not None:
        cal = check_calibration(*check, gpu=gpu, peak_tflops=peak_tflops)
    else:
        cal = run_calibration(out_dir, shapes=shapes, repeats=repeats, nsys=nsys, gpu=gpu, peak_tflops=peak_tflops)
    writers = {
        "table": calibration_view.terminal_view,
        "json": lambda c: json_text(calibration_view.calibration_document(c)),
        "md": calibration_view.markdown_view,
    }
    render(cal, fmt, output, writers)
    if not cal.passed:
        ctx.exit(CALIBRATION_FAILED)


def _side(path: Path, options: dict[str, object]) -> ReportSide:
    """One side of a comparison: a report JSON as written, or a trace reported now."""
    from stagemfu import report as rp
    from stagemfu.report.compare import read_report_json, side_from_report

    if path.suffix.lower() == ".json":
        return read_report_json(path)
    return side_from_report(rp.report(path, top=COMPARE_KERNELS, **_report_options(options)), str(path))


def _report_options(given: dict[str, object]) -> dict[str, object]:
    """Keyword arguments of :func:`stagemfu.report.report` from the shared FLOPs, within and peak options."""
    inputs = _inputs(given)
    return {
        "flops_file": given["flops_file"],
        "op_flops": given["op_flops"],
        "model": given["model"],
        "config": given["config"],
        "inputs": inputs,
        "counters": counter_names(given["counters"]),
        "within": given["within"],
        "all_instances": given["all_instances"],
        "launches": given["launches"],
        "gpu": given["gpu"],
        "dtype": given["dtype"],
        "peak_tflops": given["peak_tflops"],
        "peak_bandwidth_gbs": given["peak_bandwidth"],
    }


def _inputs(given: dict[str, object]) -> Inputs | None:
    """An analyzer ``Inputs`` from the input flags given, None when none was (then shapes.json or defaults apply).

    An unset flag reads None, or False for ``--full-logits``. ``--dtype`` also picks the peak.
    """
    from stagemfu.models import Inputs

    flags = {field.name: given[field.name] for field in dataclasses.fields(Inputs)}
    values = {k: v for k, v in flags.items() if v is not None and v is not False}
    return Inputs(**values) if values else None
