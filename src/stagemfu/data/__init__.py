"""Data shipped with the package: the embedded default trace, model configs, peak and category tables."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_TRACE_NAME = "deepseek_ocr2_base.sqlite.xz"


def default_trace() -> Path:
    """The embedded real trace: DeepSeek-OCR-2 (random weights), base mode, 289 prompt + 8 new
    tokens, recorded with ``stagemfu run`` on an H100 under nsys 2025.3.1. Its ``.shapes.json``
    and ``.run.json`` lie beside it, so ``stagemfu report`` needs no flags for it."""
    return Path(str(files(__name__) / DEFAULT_TRACE_NAME))
