"""Find the user's Nsight Systems CLI, ask its version, and export its reports to SQLite.

nsys is installed in many places: on PATH, under ``/opt/nvidia/nsight-systems/VERSION/bin``
(NVIDIA's installer and packages, ``nsight-systems-cli`` included), inside a CUDA toolkit
(``/usr/local/cuda-X/nsight-systems-VERSION/bin``) or bundled with Nsight Compute
(``/opt/nvidia/nsight-compute/VERSION/host/target-linux-x64/nsys``). The newest version wins
within each place; an explicit choice (``--nsys PATH`` or ``$NSYS``) is never second-guessed.
"""

from __future__ import annotations

import glob
import math
import os
import re
import shutil
import signal
import subprocess
from contextlib import suppress
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
TIMEOUT_ENV = "STAGEMFU_NSYS_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0  # nsys export of a multi-GB report takes minutes; a hang must still end
VERSION_TIMEOUT_S = 60.0


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
    """The version of this nsys, or None when it does not answer ``--version`` within a minute."""
    try:
        done = run_tool([nsys, "--version"], timeout=VERSION_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(done.stdout + done.stderr)


def tool_timeout() -> float | None:
    """Seconds an nsys export may run, from ``STAGEMFU_NSYS_TIMEOUT`` (default an hour; 0: no limit).

    Raises
    ------
    ExportError
        The variable is not a number of seconds.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds < math.inf):
        raise ExportError(f"{TIMEOUT_ENV}={raw!r}: not a number of seconds (0 for no limit)")
    return seconds or None


def run_tool(argv: list[str], *, timeout: float | None) -> subprocess.CompletedProcess[str]:
    """Run an external tool to its end with its output captured, or kill it and all it started.

    The tool runs in its own process group, so on a timeout, Ctrl-C or SIGTERM the whole group is
    killed (nsys starts helper processes that would otherwise keep running, and keep its pipes
    open).

    Raises
    ------
    OSError
        The tool cannot be started.
    subprocess.TimeoutExpired
        It ran past ``timeout`` seconds (and was killed).
    """
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except BaseException:
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                child.communicate(timeout=5)
            raise
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


def export_argv(nsys: str, report: Path, target: Path) -> list[str]:
    """The ``nsys export`` command that writes ``report``'s SQLite export to ``target``."""
    return [nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "--output", str(target), str(report)]


def export_report(nsys: str, report: Path, target: Path, *, how_to: str) -> None:
    """Export ``report`` to SQLite at ``target`` with ``nsys export``, within :func:`tool_timeout`.

    Raises
    ------
    ExportError
        nsys cannot be run, fails, or runs past the time limit; the message quotes nsys's first
        line and ends with ``how_to``.
    """
    timeout = tool_timeout()
    try:
        done = run_tool(export_argv(nsys, report, target), timeout=timeout)
    except OSError as err:
        raise ExportError(f"{report}: could not run {nsys} ({err.strerror}); {how_to}") from err
    except subprocess.TimeoutExpired as err:
        raise ExportError(
            f"{report}: `nsys export` did not finish within {timeout:g} s and was stopped; raise {TIMEOUT_ENV} "
            f"(seconds, 0 for no limit) or {how_to}"
        ) from err
    if done.returncode != 0 or not target.is_file():
        said = next((line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()), "no message")
        raise ExportError(f"{report}: `nsys export` failed ({said[:200]}); {how_to}")
