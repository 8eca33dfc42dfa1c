"""Models as data: presets and local Hugging Face configs, input shapes and image-token rules.

This package imports no torch. ``stagemfu.models.build`` (the ``[model]`` extra) turns a
:class:`ModelSpec` into a transformers model.
"""

from stagemfu.models.presets import MODEL_PRESETS, ModelSpec, load_model_spec
from stagemfu.models.shapes import DTYPES, MODES, STAGES, Inputs, Shapes, resolve_shapes

__all__ = [
    "DTYPES",
    "MODEL_PRESETS",
    "MODES",
    "STAGES",
    "Inputs",
    "ModelSpec",
    "Shapes",
    "load_model_spec",
    "resolve_shapes",
]
