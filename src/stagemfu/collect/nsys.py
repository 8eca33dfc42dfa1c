"""Find the user's Nsight Systems CLI, ask its version, and export its reports to SQLite.

nsys is installed in many places: on PATH, under ``/opt/nvidia/nsight-systems/VERSION/bin``
(NVIDIA's installer and packages, ``nsight-systems-cli`` included), inside a CUDA toolkit
(``/usr/local/cuda-X/nsight-systems-VERSION/bin``) or bundled with Nsight Compute
(``/opt/nvidia/nsight-compute/VERSION/host/target-linux-x64/nsys``). The newest version wins
within each place; an explicit choice (``--nsys PATH`` or ``$NSYS``) is never second-guessed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from stagemfu.errors import CollectError, ExportError

# Install locations searched after $NSYS and PATH, in order; each glob's newest version first.
INSTALL_GLOBS = (
    "/opt/nvidia/nsight-systems/*/bin/nsys",
    "/opt/nvidia/nsight-systems-cli/*/bin/nsys",
    "{cuda}/bin/nsys",
    "{cuda}/nsight-systems-*/bin/nsys",
    "/usr/local/cuda*/bin/nsys",
    "/usr/local/cuda*/nsight-systems-*/bin/nsys",
    "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
)
HOW_TO_INSTALL = (
    "install Nsight Systems (https://developer.nvidia.com/nsight-systems, or the nsight-systems-cli "
    "package from NVIDIA's CUDA repository), then put nsys on PATH, set NSYS=/path/to/nsys or pass --nsys PATH"
)
_VERSION = re.compile(r"(\d{4}\.\d+(?:\.\d+)*)")


def version_key(path: str) -> tuple[int, ...]:
    """Sort key of an install path: the numbers of the first ``YYYY.N...`` version in it."""
    found = _VERSION.search(path)
    return tuple(int(part) for part in found.group(1).split(".")) if found else ()


def installed_candidates(cuda_home: str | None = None) -> list[str]:
    """nsys executables in the known install locations, best first (see :data:`INSTALL_GLOBS`)."""
    found: list[str] = []
    for pattern in INSTALL_GLOBS:
        if "{cuda}" in pattern:
            if not cuda_home:
                continue
            pattern = pattern.format(cuda=cuda_home)
        matches = sorted(glob.glob(pattern), key=version_key, reverse=True)
        found += [m for m in matches if m not in found and os.access(m, os.X_OK)]
    return found


def find_nsys(explicit: str | None = None) -> str | None:
    """The nsys executable to use, or None when there is none.

    Parameters
    ----------
    explicit
        A path the user chose (``--nsys``). When given, or when ``$NSYS`` is set, that file is
        the only candidate: a wrong path is reported rather than replaced by another nsys.

    Returns
    -------
    The path, looked up in order: ``explicit``, ``$NSYS``, PATH, then the install locations of
    :data:`INSTALL_GLOBS` (``$CUDA_HOME``/``$CUDA_PATH`` for the toolkit ones).
    """
    chosen = explicit or os.environ.get("NSYS")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    on_path = shutil.which("nsys")
    if on_path:
        return on_path
    installs = installed_candidates(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"))
    return installs[0] if installs else None


def require_nsys(explicit: str | None = None) -> str:
    """Like :func:`find_nsys`, but a missing nsys raises :class:`CollectError` saying how to install it."""
    found = find_nsys(explicit)
    if found is not None:
        return found
    chosen = explicit or os.environ.get("NSYS")
    if explicit:
        raise CollectError(f"--nsys {explicit}: no such file; {HOW_TO_INSTALL}")
    if chosen:
        raise CollectError(f"NSYS={chosen}: no such file; {HOW_TO_INSTALL}")
    raise CollectError(
        f"nsys (Nsight Systems CLI) not found on PATH or in /opt/nvidia, /usr/local/cuda*; {HOW_TO_INSTALL}"
    )


def parse_version(text: str) -> str | None:
    """The version in ``nsys --version`` output (``NVIDIA Nsight Systems version 2025.3.1.90-...``)."""
    found = _VERSION.search(text)
    return found.group(1) if found else None


def nsys_version(nsys: str) -> str | None:
    """The version of this nsys, or None when it does not answer ``--version``."""
    try:
        done = subprocess.run([nsys, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(done.stdout + done.stderr)


def export_argv(nsys: str, report: Path, target: Path) -> list[str]:
    """The ``nsys export`` command that writes ``report``'s SQLite export to ``target``."""
    return [nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "--output", str(target), str(report)]


def export_report(nsys: str, report: Path, target: Path, *, how_to: str) -> None:
    """Export ``report`` to SQLite at ``target`` with ``nsys export``.

    Raises
    ------
    ExportError
        nsys cannot be run or fails; the message quotes nsys's first line and ends with ``how_to``.
    """
    try:
        done = subprocess.run(export_argv(nsys, report, target), capture_output=True, text=True, check=False)
    except OSError as err:
        raise ExportError(f"{report}: could not run {nsys} ({err.strerror}); {how_to}") from err
    if done.returncode != 0 or not target.is_file():
        said = next((line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()), "no message")
        raise ExportError(f"{report}: `nsys export` failed ({said[:200]}); {how_to}")
