"""stagemfu: how well each stage of a model uses the GPU, from Nsight Systems traces.

Stage ranges for your own code (see :mod:`stagemfu.collect.api`)::

    with stagemfu.stage("prefill"): ...
    stagemfu.instrument(model, {"sam": "model.vision_tower.sam_encoder"})
    with stagemfu.generation_stages(model): model.generate(...)

They are loaded on first use, so ``import stagemfu`` stays cheap (no torch, no nvtx).
"""

from typing import Any

__version__ = "0.1.0"

_API = ("stage", "instrument", "generation_stages")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from stagemfu.collect import api

        return getattr(api, name)
    raise AttributeError(f"module 'stagemfu' has no attribute {name!r}")
