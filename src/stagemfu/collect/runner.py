"""The built-in model runner: ``python -m stagemfu.collect.runner MODEL [OPTIONS]``.

``stagemfu run`` starts it under nsys. It builds the model (random weights unless ``--weights``),
makes inputs of the exact shapes the analyzer counts, then calls ``generate`` once as a warm-up
and ``--repeat`` times measured, each forced to exactly ``--new-tokens`` tokens. NVTX ranges, all
in the ``stagemfu`` domain::

    warmup | measured | op_shapes  one per generate call (op_shapes: with --op-shapes, under
                                   emit_nvtx(record_shapes=True), for `report --op-flops`)
      prefill                      the first forward (makes token 1)
        vision                     OCR models: global view + local crops + projector
          sam, clip | encoder, projector
      decode                       one per generated token after the first

No synchronization happens inside these ranges unless ``--sync``. The runner writes
``OUT/shapes.json`` (model, config, inputs, resolved shapes, devices and versions), so the trace
can be reported later without flags.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stagemfu import schemas
from stagemfu.collect.api import generation_stages, instrument, ranges, stage, synchronize
from stagemfu.collect.run_options import ATTENTION, RunnerOptions, options_from_params, runner_options
from stagemfu.errors import CollectError, ModelConfigError, StagemfuError
from stagemfu.files import write_output

if TYPE_CHECKING:
    import torch

    from stagemfu.models import ModelSpec, Shapes

WARMUP, MEASURED, OP_SHAPES = "warmup", "measured", "op_shapes"


def run_model(options: RunnerOptions, *, out_dir: Path) -> dict[str, Any]:
    """Build the model, run warm-up and measured generations under stage ranges, write shapes.json.

    Returns
    -------
    dict
        The ``stagemfu.shapes/1`` document written to ``out_dir / shapes.json``.

    Raises
    ------
    MissingDependencyError
        nvtx (or torch, transformers) is not installed.
    ModelConfigError
        The model, its config or the inputs are unusable.
    CollectError
        The device is unavailable, or generation did not make exactly ``new_tokens`` tokens.
    """
    from stagemfu.models import load_model_spec, resolve_shapes
    from stagemfu.models.build import build_model, example_inputs, stage_modules

    ranges()  # no nvtx: fail now, not after minutes of model building
    if options.op_shapes:
        _check_op_shapes()
    spec = load_model_spec(options.model, config=options.config)
    inputs = options.inputs
    if options.image is not None:
        inputs = dataclasses.replace(inputs, image_size=image_size(spec, options.image))
    shapes = resolve_shapes(spec, inputs)
    _check_device(options.device)
    weights = options.weights.resolve() if options.weights is not None else None
    model = build_model(spec, device=options.device, dtype=inputs.dtype, attn=ATTENTION[options.attn], weights=weights)
    kwargs = example_inputs(spec, shapes, device=options.device)
    notes = ["weights: random (pass --weights DIR for a checkpoint)" if weights is None else f"weights: {weights}"]
    if options.image is not None:
        kwargs, image_note = spec.family.processed_image(shapes, options.image, kwargs)
        notes.append(image_note)
    stages = stage_modules(spec, model)
    walls = generate_repeatedly(
        model, kwargs, stages, inputs.new_tokens, repeat=options.repeat, sync=options.sync, op_shapes=options.op_shapes
    )
    document = shapes_document(options, spec, shapes, stages=stages, call_wall_ns=walls, notes=notes)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_output(Path(out_dir) / schemas.SHAPES_FILE, json.dumps(document, indent=2) + "\n")
    return document


def generate_repeatedly(
    model: torch.nn.Module,
    kwargs: dict[str, Any],
    stages: dict[str, str],
    new_tokens: int,
    *,
    repeat: int,
    sync: bool,
    op_shapes: bool = False,
) -> dict[str, list[int]]:
    """One ``warmup`` and ``repeat`` ``measured`` generate calls, each under its stage ranges, and
    with ``op_shapes`` one more in an ``op_shapes`` range under
    ``torch.autograd.profiler.emit_nvtx(record_shapes=True)`` (one NVTX range per aten op).

    Every call is checked to generate exactly ``new_tokens`` tokens per sequence.

    Returns
    -------
    dict
        ``warmup``, ``measured`` (and ``op_shapes``) -> wall time of each call in ns, up to the
        GPU's end (a synchronize after the range), measured the same way with and without a
        profiler, so runs compare (``bench/bench_collect_overhead.py``).
    """
    import contextlib
    import time

    import torch

    prompt = kwargs["input_ids"].shape[1]
    forced = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "use_cache": True}
    calls = [WARMUP] + [MEASURED] * repeat + [OP_SHAPES] * op_shapes
    walls: dict[str, list[int]] = {name: [] for name in calls}
    with instrument(model, stages, sync=sync), torch.inference_mode():
        for name in calls:
            shapes = (
                torch.autograd.profiler.emit_nvtx(record_shapes=True) if name == OP_SHAPES else contextlib.nullcontext()
            )
            start = time.perf_counter_ns()
            with stage(name), shapes, generation_stages(model, sync=sync) as steps:
                out = model.generate(**kwargs, **forced)
            synchronize()  # outside the range: repetitions never overlap on the GPU
            walls[name].append(time.perf_counter_ns() - start)
            made = out.shape[1] - prompt
            if made != new_tokens or steps.steps not in (0, new_tokens):
                raise CollectError(
                    f"generate made {made} tokens in {steps.steps} forward calls instead of {new_tokens}; "
                    "the model's generation config stops early or runs extra passes (check its generation_config)"
                )
    return walls


def image_size(spec: ModelSpec, image: Path) -> tuple[int, int]:
    """(width, height) of a real image, for the crop-grid rule; only OCR models take images."""
    if spec.family.image_rule is None:
        raise ModelConfigError(f"--image {image}: {spec.name} is a text-only model; drop --image")
    try:
        from PIL import Image

        with Image.open(image) as img:
            return img.size
    except ImportError as err:
        raise ModelConfigError(f"--image {image}: reading images needs Pillow: pip install pillow") from err
    except OSError as err:
        raise ModelConfigError(f"--image {image}: not a readable image ({err})") from err


def shapes_document(
    options: RunnerOptions,
    spec: ModelSpec,
    shapes: Shapes,
    *,
    stages: dict[str, str],
    call_wall_ns: dict[str, list[int]],
    notes: list[str],
) -> dict[str, Any]:
    """The ``stagemfu.shapes/1`` document: what ran, with which shapes, on what.

    ``model`` and ``config`` are what ``stagemfu report`` needs to count the same FLOPs again
    (a preset name or an absolute path, and the absolute path of the config overlay).
    """
    import torch
    import transformers

    argv = options.argv()
    device = torch.device(options.device)
    on_gpu = device.type == "cuda"
    return {
        "schema": schemas.SHAPES,
        "model": argv[0],
        "config": str(options.config.resolve()) if options.config is not None else None,
        "family": spec.family.name,
        "config_source": spec.source,
        "inputs": dataclasses.asdict(shapes.inputs),
        "shapes": {k: v for k, v in dataclasses.asdict(shapes).items() if k != "inputs"} | {"crops": shapes.crops},
        "generated_tokens": shapes.inputs.new_tokens,  # checked after every call
        "call_wall_ns": call_wall_ns,
        "repeat": options.repeat,
        "sync": options.sync,
        "op_shapes": options.op_shapes,
        "attn": options.attn,
        "weights": str(options.weights.resolve()) if options.weights is not None else "random",
        "image": str(options.image.resolve()) if options.image is not None else None,
        "device": options.device,
        "device_name": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "stage_modules": stages,
        "runner_argv": argv,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda},
        "notes": notes,
    }


def _check_op_shapes() -> None:
    """``--op-shapes`` needs torch's NVTX profiler, which only a CUDA build of torch has."""
    import torch

    try:
        with torch.autograd.profiler.emit_nvtx(record_shapes=True):
            pass
    except (RuntimeError, AssertionError) as err:  # a CPU build asserts "Torch not compiled with CUDA enabled"
        raise CollectError(
            f"--op-shapes: torch {torch.__version__} cannot emit NVTX op ranges ({' '.join(str(err).split())}); "
            "use a CUDA build of torch or drop --op-shapes"
        ) from err


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise CollectError(f"--device {device}: not a torch device ({err}); use cuda, cuda:N or cpu") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise CollectError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU; use --device cpu to try it")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@runner_options
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where shapes.json goes.",
)
def main(out_dir: Path, **params: Any) -> None:
    """Run MODEL's generate under NVTX stage ranges (``stagemfu run`` starts this under nsys).

    Errors exit with status 2 and one line on stderr, like every stagemfu command.
    """
    options = options_from_params(params)
    try:
        document = run_model(options, out_dir=out_dir)
    except StagemfuError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
    inputs = document["inputs"]
    click.echo(
        f"stagemfu runner: {document['model']} ({document['family']}) on {document['device_name']}: "
        f"1 warm-up + {options.repeat} measured generate call(s), batch {inputs['batch']}, "
        f"{document['shapes']['prompt_tokens']} prompt + {inputs['new_tokens']} new tokens, {inputs['dtype']}; "
        + "; ".join(document["notes"])
    )


if __name__ == "__main__":
    main()
