"""``stagemfu collect -- CMD`` and ``stagemfu run MODEL``: record a trace with nsys, then show its stages."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stagemfu import schemas
from stagemfu.cli import check_files, print_rich
from stagemfu.collect.command import CAPTURE_ALL, CAPTURE_HELP, DEFAULT_PROFILE, ProfileOptions
from stagemfu.collect.run_options import options_from_params, runner_options
from stagemfu.collect.session import DEFAULT_NAME, CollectPlan, CollectResult
from stagemfu.errors import TraceError

NO_GPU_ACTIVITY = "no GPU activity captured"
INPUT_OPTIONS = {"MODEL": "model", "--config": "config", "--image": "image"}  # files `run` reads


def collect_options(fn: Callable) -> Callable:
    """Where the trace goes and how nsys records it; shared by ``collect`` and ``run``."""
    options = [
        click.option(
            "-d",
            "--out-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("stagemfu-out"),
            show_default=True,
            help="Output directory: NAME.nsys-rep, NAME.sqlite, run.json (an earlier run's files there are replaced).",
        ),
        click.option(
            "--name",
            default=DEFAULT_NAME,
            show_default=True,
            help="Base name of the trace files: a plain file name (no '/'), inside --out-dir.",
        ),
        click.option("--nsys", "nsys", default=None, help="The nsys executable (default: $NSYS, PATH, /opt/nvidia)."),
        click.option("--capture", default=CAPTURE_ALL, show_default=True, help=f"What to record. {CAPTURE_HELP}."),
        click.option("--trace", default=DEFAULT_PROFILE.trace, show_default=True, help="nsys --trace: APIs traced."),
        click.option("--sample", default=DEFAULT_PROFILE.sample, show_default=True, help="nsys --sample: CPU IPs."),
        click.option(
            "--cpuctxsw", default=DEFAULT_PROFILE.cpuctxsw, show_default=True, help="nsys --cpuctxsw: thread switches."
        ),
        click.option(
            "--cuda-graph-trace",
            type=click.Choice(("node", "graph")),
            default=DEFAULT_PROFILE.cuda_graph_trace,
            show_default=True,
            help="node: every kernel of a CUDA graph replay; graph: one activity per replay (less overhead).",
        ),
        click.option(
            "--nsys-arg",
            "nsys_args",
            multiple=True,
            metavar="ARG",
            help="Extra nsys profile argument, e.g. --nsys-arg=--cuda-memory-usage=true (repeatable; wins over ours).",
        ),
        click.option("--dry-run", is_flag=True, help="Print the nsys commands and exit without running them."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _collect_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """``stagemfu.collect.collect`` keyword arguments from the parsed :func:`collect_options`."""
    return {
        "out_dir": params["out_dir"],
        "name": params["name"],
        "nsys": params["nsys"],
        "capture": params["capture"],
        "extra_nsys_args": tuple(params["nsys_args"]),
        "options": ProfileOptions(
            trace=params["trace"],
            sample=params["sample"],
            cpuctxsw=params["cpuctxsw"],
            cuda_graph_trace=params["cuda_graph_trace"],
        ),
    }


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@collect_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def collect(command: tuple[str, ...], dry_run: bool, **params: Any) -> int:
    """Run COMMAND under nsys, export the trace to SQLite and show its per-stage GPU times.

    Put NVTX ranges around the stages of your program (stagemfu.stage, stagemfu.instrument,
    torch.cuda.nvtx). Everything after `--` (or after the first word that is not an option) is
    the command. The exit status is 1 when the command fails or is interrupted (the partial
    trace is kept), 2 for a usage or input error.

    \b
    Output directory (--out-dir, default stagemfu-out):
      NAME.nsys-rep  the nsys report      NAME.sqlite  its SQLite export
      run.json       command, exit status, start time, GPU, driver, nsys/torch/transformers versions

    \b
    Examples:
      stagemfu collect -- python serve.py --batch 8
      stagemfu collect --capture nvtx:measured -d out -- python bench.py
      stagemfu collect --dry-run -- python bench.py
    """
    from stagemfu.collect import collect as run_collection
    from stagemfu.collect import plan_collection

    kwargs = _collect_kwargs(params)
    plan = plan_collection(list(command), **kwargs, dry_run=dry_run)
    _check_files(plan, params)
    if _announce(plan, dry_run):
        return 0
    result = run_collection(list(command), **kwargs)
    return _conclude(result, within=None)


@click.command()
@runner_options
@collect_options
def run(dry_run: bool, **params: Any) -> int:
    """Profile a built-in model's generate under nsys and report each stage's MFU.

    MODEL is a preset (deepseek-ocr2, deepseek-ocr) or a local Hugging Face config (a config.json
    or its directory). Weights are random unless --weights DIR; nothing is downloaded. One
    warm-up and --repeat measured generate calls, each forced to exactly --new-tokens tokens, with
    NVTX ranges warmup/measured, prefill, decode (one per token after the first) and, for OCR
    models, vision, sam, clip|encoder, projector. run.json records the model and inputs, so
    `stagemfu report OUT/trace.sqlite` needs no flags later.

    \b
    Examples:
      stagemfu run deepseek-ocr2 --mode base --new-tokens 16
      stagemfu run deepseek-ocr --mode gundam --crops 4 --repeat 3 -d ocr1-gundam
      stagemfu run tests/fixtures/configs/llama-3.2-1b --text-tokens 512 --new-tokens 64
    """
    from stagemfu.collect import plan_collection
    from stagemfu.collect.model_run import collect_model, require_runner, runner_command

    options = options_from_params(params)
    options.shapes()  # a bad model or input fails here, in one line, before nsys starts
    if not dry_run:
        require_runner()
    kwargs = _collect_kwargs(params)
    plan = plan_collection(runner_command(options, out_dir=kwargs["out_dir"]), **kwargs, dry_run=dry_run)
    _check_files(plan, params)
    if _announce(plan, dry_run):
        return 0
    result = collect_model(options, **kwargs)
    return _conclude(result, within="measured", report=True)


def _check_files(plan: CollectPlan, params: dict[str, Any]) -> None:
    """The files a collection writes (an earlier run's are removed first) are none of its inputs."""

    check_files(
        inputs={option: params.get(key) for option, key in INPUT_OPTIONS.items()} | {"--nsys": plan.nsys},
        outputs={
            "report": plan.rep,
            "export": plan.sqlite,
            schemas.RUN_FILE: plan.run_json,
            schemas.SHAPES_FILE: plan.run_json.with_name(schemas.SHAPES_FILE),
        },
    )


def _announce(plan: CollectPlan, dry_run: bool) -> bool:
    """Print the commands (stdout for --dry-run, else stderr before they run); True when done."""
    lines = [shlex.join(plan.profile), shlex.join(plan.export)]
    if dry_run:
        click.echo("\n".join(lines))
        for note in plan.notes:
            click.echo(f"stagemfu: {note}", err=True)
        return True
    click.echo(f"stagemfu: {lines[0]}", err=True)
    return False


def _conclude(result: CollectResult, *, within: str | None, report: bool = False) -> int:
    """Show what the run left (files, stage table or MFU report) and give the exit status."""
    for note in result.notes:
        click.echo(f"stagemfu: {note}", err=True)
    written = [p for p in (result.rep, result.sqlite, result.run_json) if p is not None and p.is_file()]
    click.echo("stagemfu: wrote " + ", ".join(str(p) for p in written), err=True)
    if result.sqlite is not None:
        _show(result.sqlite, within=within, report=report)
    if result.exit_status != 0 and not result.interrupted and not result.rep.is_file():
        click.echo(
            f"Error: nsys failed (exit status {result.exit_status}) and wrote no report; see its messages above "
            "(the command may not have run)",
            err=True,
        )
        return 1
    if result.interrupted or result.exit_status != 0:
        how = "was interrupted" if result.interrupted else f"exited with status {result.exit_status}"
        click.echo(f"Error: the command {how}; the trace it left is in {result.run_json.parent}", err=True)
        return 1
    if result.sqlite is None:
        click.echo(f"Error: no trace to show; {' '.join(result.notes)}", err=True)
        return 2
    return 0


def _show(sqlite: Path, *, within: str | None, report: bool) -> None:
    """The MFU report (``run``, when FLOPs and a peak are known), else the stage-time table."""
    from stagemfu import postprocess as pp
    from stagemfu.errors import StagemfuError
    from stagemfu.report.render import postprocess_view

    try:
        trace = pp.read(sqlite, chunk_ops="auto")
    except TraceError as err:
        click.echo(f"stagemfu: {_no_stages_reason(err)}", err=True)
        return
    has_within = within is not None and (trace.ranges["name"] == within).any()
    st = pp.stage_times(trace, within=within if has_within else None)
    if st.totals["gpu_ops"].sum() == 0:
        click.echo(f"stagemfu: {NO_GPU_ACTIVITY}: {sqlite} holds no kernel, memcpy or memset", err=True)
        return
    if report:
        from stagemfu import report as rp
        from stagemfu.cli.report import render_report

        try:
            render_report(rp.report(sqlite), "table", "stages", None)
            return
        except StagemfuError as err:
            click.echo(f"stagemfu: no MFU report ({err}); stage times follow", err=True)
    print_rich(postprocess_view.terminal_view(st), None)


def _no_stages_reason(err: TraceError) -> str:
    """The reader's reason, led by "no GPU activity captured" when that is what it means."""
    from stagemfu.postprocess.nsys.tables import RUNTIME_TABLE

    message = str(err)
    if RUNTIME_TABLE in message or "no GPU activity" in message:
        return f"{NO_GPU_ACTIVITY}: {message}"
    return message
