"""``stagemfu analyze``: FLOPs, bytes and parameters per stage of a model, on the CPU."""

from __future__ import annotations

from pathlib import Path

import click

from stagemfu.cli import FORMATS, check_files, counter_names, format_option, input_options, output_option, render


@click.command()
@click.argument("model")
@input_options()
@format_option(
    FORMATS,
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
    counters: str | None,
    fmt: str,
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
    from stagemfu.report.render.csv import csv_text

    check_files(inputs={"MODEL": model, "--config": config}, outputs={"-o": output})
    spec = load_model_spec(model, config=config)
    inputs = Inputs(mode, image_size, crops, text_tokens, new_tokens, batch, dtype, full_logits)
    result = run_analysis(spec, inputs, counters=counter_names(counters))
    writers = {
        "table": analyze_view.terminal_view,
        "json": analyze_data.analyze_json,
        "csv": lambda r: csv_text(analyze_data.stage_table(r)),
        "md": analyze_view.markdown_view,
    }
    render(result, fmt, output, writers)
