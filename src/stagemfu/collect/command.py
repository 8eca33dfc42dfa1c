"""The exact ``nsys profile`` command line a collection runs.

Defaults are chosen for stage timing at low overhead (docs/collect.md says why): trace CUDA and
NVTX only, no CPU sampling or context switches, CUDA graphs at node level so each kernel of a
replay is seen. Each is a field of :class:`ProfileOptions` and overridable from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stagemfu.errors import CollectError

CAPTURE_ALL = "all"
CAPTURE_PROFILER_API = "cudaProfilerApi"
CAPTURE_NVTX_PREFIX = "nvtx:"
CAPTURE_HELP = (
    "all: the whole run; nvtx:NAME: from the first NVTX range called NAME (in any domain; NAME@DOMAIN for "
    "one domain) to its end; cudaProfilerApi: between cudaProfilerStart and cudaProfilerStop"
)
# nsys only matches NVTX capture ranges against registered strings unless this is 0; torch's
# ranges (torch.cuda.nvtx) are plain strings.
REGISTER_ONLY_ENV = "NSYS_NVTX_PROFILER_REGISTER_ONLY=0"


@dataclass(frozen=True)
class ProfileOptions:
    """Everything about ``nsys profile`` that a user may change.

    Attributes
    ----------
    trace
        ``--trace``: the APIs traced; CUDA and NVTX are what stage times need.
    sample
        ``--sample``: CPU IP sampling; off, it only adds overhead here.
    cpuctxsw
        ``--cpuctxsw``: OS context-switch tracing; off for the same reason.
    cuda_graph_trace
        ``--cuda-graph-trace``: ``node`` records every kernel of a graph replay; ``graph``
        records one activity per replay at lower overhead.
    """

    trace: str = "cuda,nvtx"
    sample: str = "none"
    cpuctxsw: str = "none"
    cuda_graph_trace: str = "node"


DEFAULT_PROFILE = ProfileOptions()


def capture_args(capture: str) -> list[str]:
    """The nsys arguments of one capture mode.

    A capture range stops collection at its end (``--capture-range-end=stop``) and lets the
    program run on, so its exit status is still the program's own. ``nvtx:NAME`` matches NAME in
    any NVTX domain (nsys's ``NAME@*``: stagemfu's own ranges are in the ``stagemfu`` domain,
    torch's in the default one); ``nvtx:NAME@DOMAIN`` restricts it to one.

    Raises
    ------
    CollectError
        ``capture`` is none of the accepted forms.
    """
    if capture == CAPTURE_ALL:
        return []
    if capture == CAPTURE_PROFILER_API:
        return ["--capture-range=cudaProfilerApi", "--capture-range-end=stop"]
    if capture.startswith(CAPTURE_NVTX_PREFIX) and capture[len(CAPTURE_NVTX_PREFIX) :]:
        name = capture[len(CAPTURE_NVTX_PREFIX) :]
        if "@" not in name.replace("\\@", ""):
            name += "@*"
        return [
            "--capture-range=nvtx",
            f"--nvtx-capture={name}",
            "--capture-range-end=stop",
            f"--env-var={REGISTER_ONLY_ENV}",
        ]
    raise CollectError(f"--capture {capture}: not a capture mode; use {CAPTURE_HELP}")


def profile_argv(
    nsys: str,
    command: list[str],
    *,
    output: Path,
    options: ProfileOptions = DEFAULT_PROFILE,
    capture: str = CAPTURE_ALL,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The ``nsys profile`` command that records ``command`` into ``output`` + ``.nsys-rep``.

    ``capture`` is ``all``, ``nvtx:NAME[@DOMAIN]`` or ``cudaProfilerApi`` (see
    :func:`capture_args`); ``extra`` arguments come after stagemfu's own, so they override them.

    Raises
    ------
    CollectError
        The command is empty or the capture mode is unknown.
    """
    if not command:
        raise CollectError("no command to profile: give it after `--`, e.g. `stagemfu collect -- python serve.py`")
    return [
        nsys,
        "profile",
        f"--trace={options.trace}",
        f"--sample={options.sample}",
        f"--cpuctxsw={options.cpuctxsw}",
        f"--cuda-graph-trace={options.cuda_graph_trace}",
        *capture_args(capture),
        "--force-overwrite=true",
        f"--output={output}",
        *extra,
        "--",
        *command,
    ]
