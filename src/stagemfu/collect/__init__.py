"""Collect: run a program or a built-in model under nsys, with NVTX stage ranges.

``collect(command, out_dir=...)`` profiles any command (see :mod:`stagemfu.collect.session`);
:mod:`stagemfu.collect.api` puts stage ranges into the user's own code, and
``python -m stagemfu.collect.runner`` is the built-in model runner that ``stagemfu run`` profiles.
Importing this package is cheap: its names load on first use (the session module reads package
metadata for run.json, which ``stagemfu postprocess`` reaching :mod:`stagemfu.collect.nsys` to
export a report should not pay for), and torch and nvtx load only when ranges are made.
"""

from __future__ import annotations

import importlib
from typing import Any

LAZY = {
    "ProfileOptions": "stagemfu.collect.command",
    "CollectPlan": "stagemfu.collect.session",
    "CollectResult": "stagemfu.collect.session",
    "collect": "stagemfu.collect.session",
    "plan_collection": "stagemfu.collect.session",
}
__all__ = sorted(LAZY)


def __getattr__(name: str) -> Any:
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'stagemfu.collect' has no attribute {name!r}")
