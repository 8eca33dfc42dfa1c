"""The command-line spelling of :class:`~stagemfu.models.Inputs`, defined once.

``stagemfu analyze``, ``stagemfu report`` and ``stagemfu run`` (and the runner it starts under
nsys) take the same model and input flags with the same meaning, so a recorded run and its FLOP
count describe the same shapes. Values are checked by :func:`~stagemfu.models.resolve_shapes`,
which gives every command the same one-line error. Only click here: no torch, and importing it
does not load the command-line package (the runner imports it inside nsys).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stagemfu.models.shapes import DTYPES, MODES, Inputs


def parse_image_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``WIDTHxHEIGHT`` -> (width, height)."""
    if value is None:
        return None
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT in pixels, e.g. 1700x2200", ctx=ctx, param=param)
    return int(width), int(height)


def input_options(
    *, from_trace: bool = False, dtype: bool = True, dtypes: tuple[str, ...] = DTYPES, full_logits: bool = True
) -> Callable[[Callable], Callable]:
    """``--config``, ``--mode``, ``--image-size``, ``--crops``, ``--text-tokens``, ``--new-tokens``,
    ``--batch``, ``--dtype`` and ``--full-logits`` as click decorators.

    Parameters
    ----------
    from_trace
        Every input defaults to None, meaning "the inputs in the trace's shapes.json, else the
        :class:`Inputs` defaults" (``report``); the help says both.
    dtype
        Include ``--dtype`` (``report`` has its own, which also picks the peak).
    dtypes
        The dtypes ``--dtype`` offers: every one the analyzer counts, or those ``stagemfu run`` can build.
    full_logits
        Include ``--full-logits`` (the runner leaves it out: ``generate`` computes lm_head for the
        last prompt position whatever the flag says).
    """
    defaults = Inputs()

    def default_option(*decls: str, default: object, help: str, **kwargs: Any) -> Callable:
        if from_trace:
            return click.option(
                *decls, default=None, help=f"{help} [default: the run's shapes.json, else {default}]", **kwargs
            )
        return click.option(*decls, default=default, show_default=True, help=help, **kwargs)

    options = [
        click.option(
            "--config",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="JSON file merged over the model's config (nested keys merge), e.g. a smaller model.",
        ),
        default_option(
            "--mode",
            type=click.Choice(MODES),
            default=defaults.mode,
            help="DeepSeek-OCR resolution mode (ignored by decoder LMs).",
        ),
        click.option(
            "--image-size",
            metavar="WxH",
            callback=parse_image_size,
            help="Original image size in pixels: picks the gundam crop grid by the model's own rule.",
        ),
        click.option("--crops", type=int, default=None, help="Gundam: number of local crops (overrides --image-size)."),
        default_option(
            "--text-tokens", type=int, default=defaults.text_tokens, help="Prompt tokens besides image tokens."
        ),
        default_option(
            "--new-tokens",
            type=int,
            default=defaults.new_tokens,
            help="Generated tokens per sequence: 1 from prefill + N-1 decode steps (no EOS stop).",
        ),
        default_option("--batch", type=int, default=defaults.batch, help="Sequences generated together."),
    ]
    if dtype:
        options.append(
            click.option(
                "--dtype",
                type=click.Choice(dtypes),
                default=defaults.dtype,
                show_default=True,
                help="Weights and activations (bytes per value; MFU uses this dtype's peak).",
            )
        )
    if full_logits:
        options.append(
            click.option("--full-logits", is_flag=True, help="Count lm_head on every prompt position in prefill.")
        )

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate
