"""``run.json``: what was run, how it ended, and on what, so a trace explains itself later.

Only facts about the run are kept: the command lines, exit status, times, GPU names and driver,
and tool versions. Never the environment (it holds tokens and paths), never the host name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from stagemfu import schemas

VERSIONED_PACKAGES = ("torch", "transformers", "nvtx")
NVIDIA_SMI_QUERY = "index,name,driver_version,memory.total"


def package_versions(packages: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Python's, stagemfu's and the installed ``packages``' versions (None when absent), without importing them."""
    from stagemfu import __version__

    versions: dict[str, str | None] = {"python": platform.python_version(), "stagemfu": __version__}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 4 and fields[0].isdigit():
            memory = int(fields[3]) if fields[3].isdigit() else None
            gpus.append({"index": int(fields[0]), "name": fields[1], "driver": fields[2], "memory_mib": memory})
    return gpus


def gpu_info() -> tuple[list[dict[str, Any]], str]:
    """The machine's GPUs and where that came from: nvidia-smi, else torch, else nothing.

    Returns
    -------
    ``(gpus, source)``: one dict per GPU (``index``, ``name``, ``driver``, ``memory_mib``; fields
    a source cannot tell are None) and ``"nvidia-smi"``, ``"torch"`` or ``"none"``.
    """
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]
        try:
            done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        gpus = parse_nvidia_smi(done.stdout) if done is not None and done.returncode == 0 else []
        if gpus:
            return gpus, "nvidia-smi"
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return [
                {"index": i, "name": torch.cuda.get_device_name(i), "driver": None, "memory_mib": None}
                for i in range(torch.cuda.device_count())
            ], "torch"
    return [], "none"


def run_document(
    *,
    command: list[str],
    nsys_command: list[str],
    nsys_version: str | None,
    capture: str,
    exit_status: int,
    interrupted: bool,
    started: datetime,
    finished: datetime,
    files: dict[str, str | None],
    notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The ``stagemfu.run/1`` document of one collection.

    Parameters
    ----------
    command
        The profiled program's argv, as the user gave it.
    nsys_command
        The full ``nsys profile`` argv that ran it.
    exit_status
        The program's exit status as nsys returned it (negative: killed by that signal).
    interrupted
        True when the user stopped the run (Ctrl-C).
    started, finished
        Wall-clock times (timezone-aware, UTC).
    files
        Output files by role (``rep``, ``sqlite``), relative to the output directory; None for
        a file that was not produced.
    """
    gpus, gpu_source = gpu_info()
    return {
        "schema": schemas.RUN,
        "command": command,
        "nsys_command": nsys_command,
        "capture": capture,
        "exit_status": exit_status,
        "interrupted": interrupted,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 3),
        "gpus": gpus,
        "gpu_source": gpu_source,
        "versions": {"nsys": nsys_version, **package_versions()},
        "files": files,
        "notes": list(notes),
    }


def write_run_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as indented JSON (UTF-8), whole or not at all."""
    from stagemfu.files import write_output

    write_output(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
