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

MODEL_PRESETS: tuple[str, ...] = ("deepseek-ocr2", "deepseek-ocr")

# model_type of a decoder-only LM config -> how its attention and MLP read (blocks.py uses this)
DECODER_LM_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "deepseek_v2", "deepseek_v3")

# DeepSeek-OCR (v1) sizes its config.json leaves out, fixed in the code that builds the model: SAM
# ViT-B as segment-anything's build_sam_vit_b makes it (16-pixel patches, 14-token windows, 4x MLP,
# 256-channel neck; https://github.com/facebookresearch/segment-anything) and CLIP-L/14's 4x MLP
# (https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json).
DEEPSEEK_OCR_FIXED = {"sam_patch_size": 16, "sam_window_size": 14, "sam_mlp_ratio": 4, "sam_neck_channels": 256,
                      "clip_mlp_ratio": 4}  # fmt: skip

# Keys (dotted paths) a config of each family must hold; checked once, when the spec is loaded.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "deepseek-ocr2": (
        "vision_config.sam_config.hidden_size",
        "vision_config.sam_config.num_hidden_layers",
        "vision_config.sam_config.num_attention_heads",
        "vision_config.sam_config.global_attn_indexes",
        "vision_config.sam_config.downsample_channels",
        "vision_config.encoder_config.hidden_size",
        "vision_config.encoder_config.num_hidden_layers",
        "vision_config.encoder_config.num_attention_heads",
        "vision_config.encoder_config.num_key_value_heads",
        "vision_config.encoder_config.intermediate_size",
        "text_config.hidden_size",
        "text_config.num_hidden_layers",
        "text_config.num_attention_heads",
        "text_config.intermediate_size",
        "text_config.vocab_size",
        "text_config.moe_intermediate_size",
        "text_config.n_routed_experts",
        "text_config.num_experts_per_tok",
        "text_config.n_shared_experts",
        "text_config.mlp_layer_types",
    ),
    "deepseek-ocr": (
        "vision_config.width.sam_vit_b.width",
        "vision_config.width.sam_vit_b.layers",
        "vision_config.width.sam_vit_b.heads",
        "vision_config.width.sam_vit_b.global_attn_indexes",
        "vision_config.width.sam_vit_b.downsample_channels",
        "vision_config.width.clip-l-14-224.width",
        "vision_config.width.clip-l-14-224.layers",
        "vision_config.width.clip-l-14-224.heads",
        "projector_config.input_dim",
        "projector_config.n_embed",
        "language_config.hidden_size",
        "language_config.num_hidden_layers",
        "language_config.num_attention_heads",
        "language_config.intermediate_size",
        "language_config.vocab_size",
        "language_config.moe_intermediate_size",
        "language_config.n_routed_experts",
        "language_config.num_experts_per_tok",
        "language_config.n_shared_experts",
        "language_config.first_k_dense_replace",
    ),
    "decoder-lm": ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
}


@dataclass(frozen=True)
class ModelSpec:
    """One model as data.

    Attributes
    ----------
    name
        ``deepseek-ocr2``, ``deepseek-ocr``, or a local model's name (its directory name, else its
        ``model_type``).
    family
        ``deepseek-ocr2``, ``deepseek-ocr`` or ``decoder-lm``: which reader and stage set apply.
    config
        The config as plain JSON: transformers' config.json format for ``deepseek-ocr2`` and
        decoder LMs, deepseek-ai/DeepSeek-OCR's config.json format for ``deepseek-ocr``.
    source
        Where the values come from: the URL of the published config, the user's file, and any
        ``--config`` file merged over it.
    """

    name: str
    family: str
    config: dict
    source: str


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
    if model in MODEL_PRESETS:
        raw = _read_json(resources.files("stagemfu.data").joinpath(f"models/{model}.json"), f"preset {model}")
        source = raw.pop("_source")
        name, family = model, model
    else:
        path = _config_path(model)
        raw = _read_json(path, str(path))
        family = model_family(raw, str(path))
        name = path.parent.name if path.name == "config.json" and path.parent.name else str(raw["model_type"])
        source = str(path)
    if config is not None:
        raw = deep_merge(raw, _read_json(config, str(config)))
        source = f"{source} + {config}"
        family = model_family(raw, source) if family == "decoder-lm" else family
    _check_keys(raw, family, source)
    return ModelSpec(name=name, family=family, config=raw, source=source)


def model_family(config: dict, source: str) -> str:
    """The family of a local config, read from its ``model_type``."""
    model_type = config.get("model_type")
    if model_type == "deepseek_ocr2":
        return "deepseek-ocr2"
    if model_type == "deepseek_vl_v2" and "clip-l-14-224" in config.get("vision_config", {}).get("width", {}):
        return "deepseek-ocr"
    if model_type in DECODER_LM_TYPES:
        return "decoder-lm"
    supported = ", ".join(("deepseek_ocr2", "deepseek_vl_v2 (DeepSeek-OCR)", *DECODER_LM_TYPES))
    raise ModelConfigError(
        f"{source}: model_type {model_type!r} is not supported; use a preset ({', '.join(MODEL_PRESETS)}) "
        f"or a config.json with model_type one of {supported}"
    )


def config_value(config: dict, key: str, source: str) -> Any:
    """The value at a dotted key path, or a one-line ModelConfigError naming the missing key."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            raise ModelConfigError(f"{source}: the model config has no {key!r}; add it (or pass --config FILE)")
        node = node[part]
    return node


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` laid over it: nested objects merge, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_keys(config: dict, family: str, source: str) -> None:
    for key in REQUIRED_KEYS[family]:
        config_value(config, key, source)


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
    except json.JSONDecodeError as err:
        raise ModelConfigError(f"{source}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from err
    if not isinstance(data, dict):
        raise ModelConfigError(f"{source}: a model config must be a JSON object")
    return data
