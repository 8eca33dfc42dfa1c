"""``stagemfu run``: a collection around the built-in runner, with the run's shapes in run.json.

The runner (:mod:`stagemfu.collect.runner`) runs as the profiled child, in this same Python, and
writes ``shapes.json``; its model, config and inputs are then copied into ``run.json``, where
``stagemfu report`` finds what it needs to count the same FLOPs again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from stagemfu import schemas
from stagemfu.collect.run_info import write_run_json
from stagemfu.collect.run_options import RunnerOptions
from stagemfu.collect.session import CollectResult, collect
from stagemfu.deps import require

RUNNER_MODULE = "stagemfu.collect.runner"  # run as `python -m`, the profiled child


def runner_command(options: RunnerOptions, *, out_dir: Path) -> list[str]:
    """The runner's command line: this interpreter, the runner module, the options, the output directory."""
    return [sys.executable, "-m", RUNNER_MODULE, *options.argv(), "--out-dir", str(Path(out_dir).resolve())]


def require_runner() -> None:
    """Raise MissingDependencyError unless the runner's packages are installed at the declared versions.

    The runner builds the model in a child under nsys: checked here, a missing or old package is
    one line before anything starts, not a traceback in the child's output.
    """
    require("torch", "transformers", "nvtx", needed_for="running a built-in model")


def collect_model(runner: RunnerOptions, /, *, out_dir: Path, **collect_options: Any) -> CollectResult:
    """Profile the built-in runner with ``runner``'s options under nsys (see :func:`stagemfu.collect.collect`).

    ``collect_options`` are :func:`stagemfu.collect.collect`'s keyword arguments. When the runner
    wrote ``shapes.json``, its ``model``, ``config`` and ``inputs`` become top-level keys of
    ``run.json`` and the whole document its ``runner`` key.
    """
    require_runner()
    Path(out_dir, schemas.SHAPES_FILE).unlink(missing_ok=True)  # an earlier run's must not pass for this one's
    result = collect(runner_command(runner, out_dir=out_dir), out_dir=out_dir, **collect_options)
    merge_shapes(result.run_json, Path(out_dir) / schemas.SHAPES_FILE)
    return result


def merge_shapes(run_json: Path, shapes_json: Path) -> None:
    """Copy the runner's document into ``run.json`` (nothing when the runner wrote none)."""
    if not shapes_json.is_file():
        return
    shapes = json.loads(shapes_json.read_text(encoding="utf-8"))
    document = json.loads(run_json.read_text(encoding="utf-8"))
    document.update({key: shapes.get(key) for key in schemas.RUN_KEYS_FROM_SHAPES}, runner=shapes)
    write_run_json(run_json, document)
