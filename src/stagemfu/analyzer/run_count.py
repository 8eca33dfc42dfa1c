"""The file a run-time FLOP count leaves beside the trace: ``flops.json``, schema ``stagemfu.flops/1``.

:func:`stagemfu.count_flops` runs torch's ``FlopCounterMode`` over one call of the user's step
and writes, per stage name, the FLOPs of that call and how many times the stage's range was
entered during it (``calls``); ``stagemfu report`` reads it back as it reads ``shapes.json``.
The writer is here; the report checks what it reads against
:data:`stagemfu.report.documents.RUN_COUNT_DOCUMENT`. No torch import.

::

    {"schema": "stagemfu.flops/1", "counter": "torch.utils.flop_counter.FlopCounterMode",
     "torch": "2.11.0", "dtype": "bf16", "total_flops": N,
     "stages": {"forward": {"flops": N, "calls": 1, "ops": {"aten.mm": N, ...}}, ...},
     "notes": [...]}
"""

from __future__ import annotations

from typing import Any

from stagemfu import schemas

COUNTER = "torch.utils.flop_counter.FlopCounterMode"


def run_count_document(
    stages: dict[str, dict[str, Any]], *, total: int, torch_version: str, dtype: str, notes: list[str]
) -> dict[str, Any]:
    """The ``stagemfu.flops/1`` document: ``stages`` maps a stage name to ``flops``, ``calls`` and ``ops``."""
    return {
        "schema": schemas.FLOPS,
        "counter": COUNTER,
        "torch": torch_version,
        "dtype": dtype,
        "total_flops": total,
        "stages": stages,
        "notes": notes,
    }
