"""Model families: one module each under ``stagemfu.models.families``, found through one registry.

A family knows how to read its config format into checked sizes (:class:`~stagemfu.models.dims.ModelDims`).
Everything else is generic and reads those sizes. Adding a family is adding one module that
subclasses :class:`Family` and decorates the class with :func:`register`; the package imports every
module it holds, so nothing else changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from stagemfu.errors import ModelConfigError
from stagemfu.models.blocks import Block
from stagemfu.models.config import ConfigReader
from stagemfu.models.dims import ModelDims
from stagemfu.models.shapes import ImageRule, Shapes

FAMILIES: dict[str, Family] = {}


class Family:
    """How one family of models reads its config.

    Attributes
    ----------
    name
        The family's name, shown as ``model.family`` in every output.
    model_types
        The ``model_type`` values of the configs it reads.
    preset
        The built-in preset it serves (``data/models/<preset>.json``), or None.
    image_rule
        How an image becomes views and image tokens in the prompt; None for a text-only model.
    stage_paths
        Vision stage -> dotted attribute path (from the built model) of the module that runs exactly
        that stage; ``vision`` names the method that runs all of them (global view, crops, projector).
    language_model_paths
        Where the decoder stack and the head sit in the built model.
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]] = ()
    preset: ClassVar[str | None] = None
    image_rule: ClassVar[ImageRule | None] = None
    stage_paths: ClassVar[dict[str, str]] = {}
    language_model_paths: ClassVar[tuple[str, str]] = ("model", "lm_head")

    def accepts(self, config: dict[str, Any]) -> bool:
        """True when ``config`` (a local config.json) is of this family."""
        return config.get("model_type") in self.model_types

    def dims(self, c: ConfigReader) -> ModelDims:
        """The model's sizes read from its config and checked; raises ModelConfigError naming the key."""
        raise NotImplementedError

    def vision_blocks(self, dims: ModelDims, side: int, views: int) -> list[Block]:
        """The vision stages' blocks over ``views`` images of ``side`` pixels (none for a text model)."""
        return []

    def vision_params(self, dims: ModelDims) -> dict[str, int]:
        """Parameters of each vision stage's modules (none for a text model)."""
        return {}

    def unused_params(self, dims: ModelDims) -> int:
        """Parameters the model holds but no stage runs."""
        return 0

    def transformers_model(self, config: dict[str, Any]) -> tuple[type, Any]:
        """(model class, config object) transformers builds the model from (imports transformers).

        By default transformers' causal-LM class registered for the config's ``model_type``.
        """
        import transformers

        values = dict(config)
        config_class = transformers.CONFIG_MAPPING[values.pop("model_type")]
        return transformers.MODEL_FOR_CAUSAL_LM_MAPPING[config_class], config_class.from_dict(values)

    def image_inputs(self, shapes: Shapes, pixels: Callable[[int, int], Any]) -> dict[str, Any]:
        """The model's image keyword arguments for ``shapes``; ``pixels(count, side)`` makes a batch
        of ``count`` random ``side`` x ``side`` images on the run's device. None for a text model."""
        return {}

    def processed_image(self, shapes: Shapes, image: Path, kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """``kwargs`` with the pixels of a real image as the model's own processor makes them, and a
        note saying what was done. By default the pixels stay random: the image sets the crop grid."""
        width, height = shapes.inputs.image_size or (0, 0)
        return kwargs, f"image {image.name}: {width}x{height} px sets the crop grid; pixels are random"

    def __str__(self) -> str:
        return self.name


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add one instance of ``cls`` to :data:`FAMILIES`; a clash is an import-time error."""
    family = cls()
    taken = {t: f.name for f in FAMILIES.values() for t in f.model_types}
    clashes = [t for t in family.model_types if t in taken]
    if family.name in FAMILIES or clashes:
        raise ValueError(f"family {family.name!r} clashes with a registered family ({clashes or family.name})")
    FAMILIES[family.name] = family
    return cls


def families() -> dict[str, Family]:
    """Every registered family by name (importing ``stagemfu.models.families`` registers them)."""
    importlib.import_module("stagemfu.models.families")
    return FAMILIES


def family_of(config: dict[str, Any], source: str) -> Family:
    """The family that reads a local config, from its ``model_type``.

    Raises
    ------
    ModelConfigError
        No family reads it; the message lists the model types that are supported.
    """
    for family in families().values():
        if family.accepts(config):
            return family
    supported = sorted({t for f in FAMILIES.values() for t in f.model_types})
    model_type = config.get("model_type")
    shown = repr(model_type) if isinstance(model_type, str) else "missing"
    raise ModelConfigError(
        f"{source}: model_type {shown[:60]} is not supported; use a preset ({', '.join(presets())}) "
        f"or a config.json with model_type one of {', '.join(supported)}"
    )


def preset_family(preset: str) -> Family | None:
    """The family serving a built-in preset, or None when no family does."""
    return next((f for f in families().values() if f.preset == preset), None)


def presets() -> tuple[str, ...]:
    """Built-in preset names, newest model first."""
    return tuple(sorted((f.preset for f in families().values() if f.preset), reverse=True))
