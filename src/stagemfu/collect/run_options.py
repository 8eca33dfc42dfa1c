"""The options of the built-in model runner, defined once for ``stagemfu run`` and the runner itself.

``stagemfu run MODEL [OPTIONS]`` parses these flags, then starts
``python -m stagemfu.collect.runner`` under nsys with :meth:`RunnerOptions.argv`; the runner parses
the same flags back. Model and input flags have the names and meaning of ``stagemfu analyze``'s,
so a run and its FLOP count describe the same shapes. No torch here: ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from stagemfu.models import Inputs, Shapes, load_model_spec, resolve_shapes
from stagemfu.models.options import input_options
from stagemfu.models.shapes import BUILD_DTYPES

ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash": "flash_attention_2"}  # flag -> transformers' name
DEVICE_DEFAULT = "cuda"


@dataclass(frozen=True)
class RunnerOptions:
    """One built-in run: which model, which inputs, how to run it.

    Attributes
    ----------
    model
        A preset name or a path to a Hugging Face config (file or directory).
    config
        A JSON file merged over the model's config, or None.
    inputs
        The generate call's shapes (mode, tokens, batch, dtype, ...).
    attn
        ``sdpa``, ``eager`` or ``flash`` (FlashAttention 2, when installed).
    repeat
        Measured repetitions after the one warm-up.
    sync
        Synchronize the GPU at the end of every stage range.
    image
        A real image for the model's own preprocessing, or None for random pixels.
    weights
        A local checkpoint directory, or None for random weights.
    device
        Where the model runs (``cuda``, ``cuda:1``, ``cpu``).
    op_shapes
        After the measured calls, one more generate call (in an ``op_shapes`` range) under
        ``torch.autograd.profiler.emit_nvtx(record_shapes=True)``, for ``stagemfu report --op-flops``.
    """

    model: str
    config: Path | None = None
    inputs: Inputs = Inputs()
    attn: str = "sdpa"
    repeat: int = 1
    sync: bool = False
    image: Path | None = None
    weights: Path | None = None
    device: str = DEVICE_DEFAULT
    op_shapes: bool = False

    def shapes(self) -> Shapes:
        """The generate call's shapes; raises ModelConfigError for a model or input the runner
        would reject, so ``stagemfu run`` says so before starting nsys (pure Python, no torch)."""
        return resolve_shapes(load_model_spec(self.model, config=self.config), self.inputs)

    def argv(self) -> list[str]:
        """The runner's command-line arguments that parse back to these options.

        Paths are made absolute, so the runner (and a later ``stagemfu report``) finds them from
        any working directory.
        """
        inputs = self.inputs
        args = [_absolute_if_path(self.model)]
        args += ["--mode", inputs.mode, "--text-tokens", str(inputs.text_tokens)]
        args += ["--new-tokens", str(inputs.new_tokens), "--batch", str(inputs.batch), "--dtype", inputs.dtype]
        if inputs.image_size is not None:
            args += ["--image-size", "{}x{}".format(*inputs.image_size)]
        if inputs.crops is not None:
            args += ["--crops", str(inputs.crops)]
        args += ["--attn", self.attn, "--repeat", str(self.repeat), "--device", self.device]
        args += ["--sync"] if self.sync else []
        args += ["--op-shapes"] if self.op_shapes else []
        for flag, path in (("--config", self.config), ("--image", self.image), ("--weights", self.weights)):
            if path is not None:
                args += [flag, str(Path(path).resolve())]
        return args


def _absolute_if_path(model: str) -> str:
    """A model given as a path (not a preset name) made absolute."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def _count_option(flag: str, default: int, help_text: str) -> Callable:
    """A flag counting something there must be at least one of, its default shown in ``--help``."""
    return click.option(flag, type=click.IntRange(min=1), default=default, show_default=True, help=help_text)


def _path_option(flag: str, help_text: str) -> Callable:
    """An optional file flag; :meth:`RunnerOptions.argv` hands its value on to the runner made absolute."""
    return click.option(flag, type=click.Path(path_type=Path), default=None, help=help_text)


def runner_options(fn: Callable) -> Callable:
    """MODEL and every runner flag, as click decorators (``stagemfu run`` and the runner share them).

    The model and input flags are :func:`stagemfu.models.options.input_options`, the spelling
    ``stagemfu analyze`` and ``stagemfu report`` use too, without ``--full-logits``.
    """
    options = [
        click.argument("model"),
        input_options(full_logits=False, dtypes=BUILD_DTYPES),
        click.option(
            "--attn", type=click.Choice(tuple(ATTENTION)), default="sdpa", show_default=True, help="Attention kernels."
        ),
        _count_option(
            "--repeat", 1, "Measured generate calls (each in a 'measured' range) after one warm-up (in 'warmup')."
        ),
        click.option(
            "--sync",
            is_flag=True,
            help="Synchronize the GPU at the end of every stage range: wall time then includes the stage's GPU "
            "work, at the price of an idle GPU between stages.",
        ),
        _path_option(
            "--image",
            "A real image: its size sets the crop grid, and DeepSeek-OCR-2's own image processor makes the "
            "pixels (else random pixels).",
        ),
        _path_option(
            "--weights",
            "Local checkpoint directory of this model class; by default random weights (timings do not "
            "depend on weight values, generated text does).",
        ),
        click.option(
            "--device", default=DEVICE_DEFAULT, show_default=True, help="Where the model runs (cuda, cuda:1, cpu)."
        ),
        click.option(
            "--op-shapes",
            is_flag=True,
            help="After the measured calls, one more generate call (in an 'op_shapes' range) under "
            "torch.autograd.profiler.emit_nvtx(record_shapes=True): one NVTX range per aten op with its input "
            "sizes, so `stagemfu report --op-flops` counts FLOPs from the program itself. Its host side is "
            "slower, so it stays out of 'measured'.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def options_from_params(params: dict[str, Any]) -> RunnerOptions:
    """The :class:`RunnerOptions` of the values click parsed with :func:`runner_options` (others are ignored)."""
    input_fields = {f.name for f in dataclasses.fields(Inputs)}
    inputs = Inputs(**{k: v for k, v in params.items() if k in input_fields})
    run_fields = {f.name for f in dataclasses.fields(RunnerOptions)} - {"inputs"}
    return RunnerOptions(inputs=inputs, **{k: v for k, v in params.items() if k in run_fields})
