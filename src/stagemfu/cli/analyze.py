"""``stagemfu analyze``: FLOPs, bytes and parameters per stage of a model, on the CPU; with ``--sweep``
or ``--gpu``, the same over a grid of input shapes read against a GPU's roofline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from stagemfu.cli import (
    FORMATS,
    check_files,
    counter_names,
    format_option,
    input_options,
    output_option,
    peak_options,
    render,
)

if TYPE_CHECKING:
    from stagemfu.models import Inputs, ModelSpec
    from stagemfu.report.peaks import Peak

SWEEP_TABLES = ("stages", "generation", "compute_bound")


@click.command()
@click.argument("model")
@input_options()
@click.option(
    "--sweep",
    "sweeps",
    metavar="NAME=V1,V2,...",
    multiple=True,
    help="Count every combination of these values of an input (repeatable): batch, text_tokens, new_tokens, "
    "crops (gundam) or mode, e.g. --sweep batch=1,8,64. Only the analytic counter runs unless --counters says "
    "otherwise.",
)
@peak_options(dtype=False)
@format_option(
    (*FORMATS, "html"),
    help="table: rich terminal table; json: the stagemfu.analyze/1 document (with --sweep or --gpu: "
    "stagemfu.analyze.sweep/1); csv: one row per stage (integers; with --sweep, the table --table names); "
    "md: the tables and notes as Markdown; html: with --sweep, one offline page of line plots over the swept "
    "values.",
)
@click.option(
    "--table",
    "table_name",
    type=click.Choice(SWEEP_TABLES),
    default="stages",
    show_default=True,
    help="With --sweep, which table --format csv writes: every stage of every combination, the whole "
    "generation's bounds, or decode's compute-bound batch.",
)
@output_option
def analyze(
    model: str,
    config: Path | None,
    mode: str,
    image_size: tuple[int, int] | None,
    crops: int | None,
    text_tokens: int,
    new_tokens: int,
    batch: int,
    dtype: str,
    full_logits: bool,
    counters: str | None,
    sweeps: tuple[str, ...],
    gpu: str | None,
    peak_tflops: float | None,
    peak_bandwidth: float | None,
    fmt: str,
    table_name: str,
    output: Path | None,
) -> None:
    """FLOPs, bytes and parameters per stage of MODEL for one generate() call.

    MODEL is a preset (deepseek-ocr, deepseek-ocr2) or a local Hugging Face config.json (or a
    directory holding one) whose model_type is one of llama, mistral, qwen2, qwen3, qwen2_moe,
    qwen3_moe, mixtral, deepseek_v2, deepseek_v3, deepseek_ocr2. Every size is checked (types,
    ranges, heads dividing the width, top-k within the experts, ...): a bad one is one error line
    naming the key. Nothing is downloaded; the torch and fvcore counters need
    `pip install 'stagemfu[model]'`.

    \b
    Stages:
      sam, clip (DeepSeek-OCR) | encoder (DeepSeek-OCR-2), projector: over every view
      vision        sam + clip|encoder + projector (the global view and all local crops)
      prefill       the language model alone over the prompt (image + text tokens)
      decode        all N-1 decode steps; step t feeds 1 token, attends over prompt + t
      decode_first  decode_last: the first and the last step alone
    Model total = vision + prefill + decode (vision runs inside prefill in a trace).

    \b
    Conventions: 2 FLOPs per multiply-accumulate; matrix products and convolutions only;
    attention counts the full q x kv square; lm_head on the last prompt position only (as
    generate() does; --full-logits for all); MoE = router + top-k routed + shared experts;
    SAM windowed attention on padded windows. flops = the analytic count, else torch's, else
    fvcore's; every counter >2 % off is noted with its cause. bytes are estimates (weights read
    per pass, MoE experts reached, KV cache, activations); kv_bytes is the KV cache held after
    the stage (all layers, all sequences; K and V per key/value head, MLA's compressed latent).

    \b
    What-if (--sweep, --gpu): every stage of every combination with its intensity (FLOP/B) and
    roofline time max(FLOPs / peak, bytes / bandwidth) on the GPU, which roof bounds it, the
    whole generation's TTFT and TPOT bounds, and the batch at which decode turns compute-bound.

    \b
    Examples:
      stagemfu analyze deepseek-ocr --mode base
      stagemfu analyze deepseek-ocr2 --mode gundam --crops 4 --format json -o flops.json
      stagemfu analyze ./Llama-3.2-1B/config.json --text-tokens 512 --counters analytic
      stagemfu analyze deepseek-ocr2 --sweep batch=1,2,4,8,16,32,64 --gpu H100
      stagemfu analyze deepseek-ocr2 --sweep batch=1,8,64 --gpu H200 --format html -o what-if.html
    """
    from stagemfu.models import Inputs, load_model_spec
    from stagemfu.report.peaks import gpu_peak

    check_files(inputs={"MODEL": model, "--config": config}, outputs={"-o": output})
    spec = load_model_spec(model, config=config)
    inputs = Inputs(mode, image_size, crops, text_tokens, new_tokens, batch, dtype, full_logits)
    peak = gpu_peak(gpu, dtype=dtype, peak_tflops=peak_tflops, peak_bandwidth_gbs=peak_bandwidth)
    if sweeps or peak is not None:
        _what_if(spec, inputs, sweeps, counters=counters, peak=peak, fmt=fmt, table_name=table_name, output=output)
        return
    if fmt == "html":
        raise click.UsageError("--format html draws a sweep: add --sweep NAME=V1,V2,... (and --gpu NAME)")
    from stagemfu.analyzer import analyze as run_analysis
    from stagemfu.report.render import analyze_data, analyze_view
    from stagemfu.report.render.csv import csv_text

    result = run_analysis(spec, inputs, counters=counter_names(counters))
    writers = {
        "table": analyze_view.terminal_view,
        "json": analyze_data.analyze_json,
        "csv": lambda r: csv_text(analyze_data.stage_table(r)),
        "md": analyze_view.markdown_view,
    }
    render(result, fmt, output, writers)


def _what_if(
    spec: ModelSpec,
    inputs: Inputs,
    sweeps: tuple[str, ...],
    *,
    counters: str | None,
    peak: Peak | None,
    fmt: str,
    table_name: str,
    output: Path | None,
) -> None:
    """The sweep (a single combination without ``--sweep``) against the GPU's roofline, rendered."""
    from stagemfu.analyzer.sweep import parse_sweeps
    from stagemfu.cli import json_text
    from stagemfu.report.render import what_if_data, what_if_html, what_if_view
    from stagemfu.report.render.csv import csv_text
    from stagemfu.report.what_if import what_if

    axes = parse_sweeps(sweeps)
    result = what_if(spec, inputs, axes, peak=peak, counters=counter_names(counters) or ("analytic",))
    writers = {
        "table": what_if_view.terminal_view,
        "json": lambda w: json_text(what_if_data.what_if_document(w)),
        "csv": lambda w: csv_text(what_if_data.table(w, table_name)),
        "md": what_if_view.markdown_view,
        "html": what_if_html.what_if_page,
    }
    render(result, fmt, output, writers)
