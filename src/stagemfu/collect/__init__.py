"""Collect: run a program or a built-in model under nsys, with NVTX stage ranges.

``collect(command, out_dir=...)`` profiles any command (see :mod:`stagemfu.collect.session`);
:mod:`stagemfu.collect.api` puts stage ranges into the user's own code, and
``python -m stagemfu.collect.runner`` is the built-in model runner that ``stagemfu run`` profiles.
Importing this package is cheap: torch and nvtx load only when ranges are made.
"""

from __future__ import annotations

from stagemfu.collect.command import ProfileOptions
from stagemfu.collect.session import CollectPlan, CollectResult, collect, plan_collection

__all__ = ["CollectPlan", "CollectResult", "ProfileOptions", "collect", "plan_collection"]
