"""``stagemfu analyze``: FLOPs, bytes and parameters per stage of a model, on the CPU."""

from __future__ import annotations

from pathlib import Path

import click

from stagemfu.cli import FORMATS, emit, output_option, print_rich
from stagemfu.models import DTYPES, MODES


def _image_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT in pixels, e.g. 1700x2200")
    return int(width), int(height)


@click.command()
@click.argument("model")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON file merged over the model's config (nested keys merge), e.g. a smaller model for tests.",
)
@click.option(
    "--mode", type=click.Choice(MODES), default="base", show_default=True, help="DeepSeek-OCR resolution mode."
)
@click.option(
    "--image-size",
    metavar="WxH",
    callback=_image_size,
    help="Original image size in pixels: picks the gundam crop grid by the model's own rule.",
)
@click.option("--crops", type=int, default=None, help="Gundam local crops (overrides --image-size's rule).")
@click.option("--text-tokens", type=int, default=64, show_default=True, help="Prompt tokens besides image tokens.")
@click.option(
    "--new-tokens", type=int, default=32, show_default=True, help="Generated tokens: 1 from prefill + N-1 decode steps."
)
@click.option("--batch", type=int, default=1, show_default=True, help="Sequences generated together.")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True, help="Precision (bytes).")
@click.option("--full-logits", is_flag=True, help="Count lm_head on every prompt position in prefill.")
@click.option(
    "--counters",
    default="analytic,torch,fvcore",
    show_default=True,
    help="Comma-separated counters to run; analytic alone skips the model build (fastest).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table: rich terminal table; json: the stagemfu.analyze/1 document; csv: one row per stage "
    "(integers); md: the table and notes as Markdown.",
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
    counters: str,
    fmt: str,
    output: Path | None,
) -> None:
    """FLOPs, bytes and parameters per stage of MODEL for one generate() call.

    MODEL is a preset (deepseek-ocr, deepseek-ocr2) or a local Hugging Face config.json (or a
    directory holding one) of a decoder LM: llama, mistral, qwen2, qwen3, mixtral, deepseek_v2/v3.
    Nothing is downloaded; the torch and fvcore counters need `pip install 'stagemfu[model]'`.

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
    per pass, MoE experts reached, KV cache, activations).

    \b
    Examples:
      stagemfu analyze deepseek-ocr --mode base
      stagemfu analyze deepseek-ocr2 --mode gundam --crops 4 --format json -o flops.json
      stagemfu analyze ./Llama-3.2-1B/config.json --text-tokens 512 --counters analytic
    """
    from stagemfu.analyzer import analyze as run_analysis
    from stagemfu.models import Inputs, load_model_spec
    from stagemfu.report.render import analyze_data, analyze_view

    spec = load_model_spec(model, config=config)
    inputs = Inputs(mode, image_size, crops, text_tokens, new_tokens, batch, dtype, full_logits)
    result = run_analysis(spec, inputs, counters=tuple(c.strip() for c in counters.split(",") if c.strip()))
    if fmt == "json":
        emit(analyze_data.analyze_json(result), output)
    elif fmt == "csv":
        emit(analyze_data.stage_table(result).write_csv(), output)
    elif fmt == "md":
        emit(analyze_view.markdown_view(result), output)
    else:
        print_rich(analyze_view.terminal_view(result), output)
