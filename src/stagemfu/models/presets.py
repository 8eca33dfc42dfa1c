"""Model specs: a built-in preset or a local Hugging Face config, as plain JSON data.

A :class:`ModelSpec` is the config dict in the model's own published format plus the family that
says how to read it. Nothing here imports torch: the analytic counter, the shape rules and the
command line work from the dict alone, and the torch side (``stagemfu.models.build``) turns the
same dict into a transformers model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from stagemfu.errors import ModelConfigError
from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims
from stagemfu.models.family import Family, family_of, preset_family, presets

MODEL_PRESETS: tuple[str, ...] = presets()


@dataclass(frozen=True)
class ModelSpec:
    """One model as data.

    Attributes
    ----------
    name
        ``deepseek-ocr2``, ``deepseek-ocr``, or a local model's name (its directory name, else its
        ``model_type``).
    family
        The family module's object (:mod:`stagemfu.models.families`): how the config, blocks, image
        tokens and torch build of this model are read. ``str(family)`` is its name (``deepseek-ocr2``,
        ``llama``, ``qwen3_moe``, ...).
    config
        The config as plain JSON: transformers' config.json format for ``deepseek-ocr2`` and
        decoder LMs, deepseek-ai/DeepSeek-OCR's config.json format for ``deepseek-ocr``.
    source
        Where the values come from: the URL of the published config, the user's file, and any
        ``--config`` file merged over it.
    dims
        The sizes every count reads, checked when the spec was loaded.
    origin
        The short name of ``source`` that messages use: ``preset deepseek-ocr2`` or the file's path,
        with any ``--config`` overlay.
    """

    name: str
    family: Family
    config: dict
    source: str
    dims: ModelDims
    origin: str


def load_model_spec(model: str, *, config: Path | None = None) -> ModelSpec:
    """The spec of a preset or of a local Hugging Face config, with an optional override merged in.

    Parameters
    ----------
    model
        A preset name (see ``MODEL_PRESETS``), a path to a ``config.json``, or a directory holding
        one. Nothing is downloaded.
    config
        A JSON file deep-merged over the model's config (objects merge key by key, anything else
        replaces), e.g. a smaller model for tests. None keeps the config as published.

    Returns
    -------
    ModelSpec
        Its config checked for the keys its family needs.

    Raises
    ------
    ModelConfigError
        Unknown preset, unreadable file, unsupported ``model_type`` or a missing key; the message
        names the file and what to do.
    """
    family: Family | None = preset_family(model)
    if family is not None:
        where = f"preset {model}"  # messages name the preset, not its long source line
        raw = _read_json(resources.files("stagemfu.data").joinpath(f"models/{model}.json"), where)
        source, name = str(raw.pop("_source")), model
    else:
        path = _config_path(model)
        where = source = str(path)
        raw = _read_json(path, source)
        name = path.parent.name if path.name == "config.json" and path.parent.name else str(raw.get("model_type"))
    if config is not None:
        raw = deep_merge(raw, _read_json(config, str(config)))
        source, where = f"{source} + {config}", f"{where} + {config}"
    family = family or family_of(raw, where)
    dims = family.dims(ConfigReader(raw, where))
    return ModelSpec(name=name, family=family, config=raw, source=source, dims=dims, origin=where)


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` laid over it: nested objects merge, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _config_path(model: str) -> Path:
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelConfigError(
            f"{model}: not a preset ({', '.join(MODEL_PRESETS)}) and no config.json there; "
            "pass a preset name, a config.json or a directory holding one"
        )
    return path


def _read_json(path: Any, source: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelConfigError(f"{source}: cannot read the model config ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ModelConfigError(f"{source}: not UTF-8 text (byte {err.start}); a model config is JSON") from err
    except json.JSONDecodeError as err:
        raise ModelConfigError(f"{source}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from err
    except RecursionError as err:
        raise ModelConfigError(f"{source}: JSON nested too deeply to be a model config") from err
    if not isinstance(data, dict):
        raise ModelConfigError(f"{source}: a model config must be a JSON object")
    return data
