"""Run a command under ``nsys profile``, then export the report and write ``run.json``.

Output directory layout (``NAME`` defaults to ``trace``)::

    OUT/NAME.nsys-rep   the report nsys wrote
    OUT/NAME.sqlite     its SQLite export (``nsys export --type sqlite``), what postprocess reads
    OUT/run.json        the stagemfu.run/1 document: command, exit status, times, GPU, versions
    OUT/flops.json      FLOPs per stage, when the program counts them (stagemfu.count_flops)

The program runs with ``STAGEMFU_OUT_DIR`` set to OUT, where ``stagemfu.count_flops`` writes.

A failing command keeps its exit status and whatever trace nsys wrote; Ctrl-C (SIGINT) and
SIGTERM are passed on to nsys, which stops the program and writes the report, and the
collection is still finalized.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from stagemfu import schemas
from stagemfu.collect.command import CAPTURE_ALL, DEFAULT_PROFILE, ProfileOptions, profile_argv
from stagemfu.collect.nsys import export_argv, export_report, nsys_version, require_nsys
from stagemfu.collect.run_info import run_document, write_run_json
from stagemfu.errors import CollectError, ExportError
from stagemfu.files import TEMP_PREFIX

DEFAULT_NAME = "trace"
NAME_MAX = 255  # bytes in one file name on Linux file systems
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class CollectPlan:
    """The commands one collection runs, and the files it will write.

    Attributes
    ----------
    nsys
        The nsys executable.
    profile
        The ``nsys profile`` argv.
    export
        The ``nsys export`` argv that turns ``rep`` into ``sqlite``.
    rep, sqlite, run_json
        Paths of the report, its SQLite export and ``run.json``.
    notes
        What the plan could not settle (no nsys found on this machine), one line each.
    """

    nsys: str
    profile: tuple[str, ...]
    export: tuple[str, ...]
    rep: Path
    sqlite: Path
    run_json: Path
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectResult:
    """How one collection ended.

    Attributes
    ----------
    rep
        The report path (it may be missing when nsys could not write it: see ``notes``).
    sqlite
        The SQLite export, or None when there is none.
    run_json
        The ``run.json`` written for this run.
    exit_status
        The profiled command's exit status (negative: killed by that signal).
    interrupted
        True when the run was stopped by Ctrl-C or SIGTERM.
    notes
        What went wrong after the run (no report, export failure), one line each.
    """

    rep: Path
    sqlite: Path | None
    run_json: Path
    exit_status: int
    notes: tuple[str, ...]
    interrupted: bool = False


def plan_collection(
    command: list[str],
    *,
    out_dir: Path,
    nsys: str | None = None,
    capture: str = CAPTURE_ALL,
    extra_nsys_args: tuple[str, ...] = (),
    options: ProfileOptions = DEFAULT_PROFILE,
    name: str = DEFAULT_NAME,
    dry_run: bool = False,
) -> CollectPlan:
    """The commands and files of a collection, without running anything (``--dry-run``).

    With ``dry_run`` a missing nsys is not an error: the plan names the executable the user chose
    (``--nsys``, ``$NSYS``) or plain ``nsys``, and its notes say it was not found, so the plan can
    be read on a machine that will not run it.

    Raises
    ------
    CollectError
        nsys is not found (unless ``dry_run``), the command is empty, the capture mode is unknown,
        or ``name`` is not a plain file name.
    """
    _check_name(name)
    notes: tuple[str, ...] = ()
    try:
        exe = require_nsys(nsys)
    except CollectError as err:
        if not dry_run:
            raise
        exe, notes = nsys or os.environ.get("NSYS") or "nsys", (f"nsys is needed to run this plan: {err}",)
    base = Path(out_dir) / name
    rep, sqlite = base.with_name(f"{name}.nsys-rep"), base.with_name(f"{name}.sqlite")
    argv = profile_argv(exe, command, output=base, options=options, capture=capture, extra=extra_nsys_args)
    return CollectPlan(
        nsys=exe,
        profile=tuple(argv),
        export=tuple(export_argv(exe, rep, sqlite)),
        rep=rep,
        sqlite=sqlite,
        run_json=Path(out_dir) / schemas.RUN_FILE,
        notes=notes,
    )


def _check_name(name: str) -> None:
    """``--name`` is the base of file names inside the output directory: no path, nothing hidden."""
    separators = {"/", "\0", os.sep, *([os.altsep] if os.altsep else [])}
    too_long = len(os.fsencode(f"{name}.nsys-rep")) > NAME_MAX
    if not name or name in (".", "..") or any(s in name for s in separators) or too_long:
        raise CollectError(
            f"--name {name!r}: must be a plain file name (no '/', not '.' or '..', at most {NAME_MAX - 9} bytes); "
            "choose the directory with --out-dir"
        )


def collect(
    command: list[str],
    *,
    out_dir: Path,
    nsys: str | None = None,
    capture: str = CAPTURE_ALL,
    extra_nsys_args: tuple[str, ...] = (),
    options: ProfileOptions = DEFAULT_PROFILE,
    name: str = DEFAULT_NAME,
) -> CollectResult:
    """Profile ``command`` with nsys into ``out_dir`` and export the report to SQLite.

    Parameters
    ----------
    command
        The program and its arguments.
    out_dir
        Where the report, its export and ``run.json`` go (created when missing; files of the
        same names left by an earlier run are removed first).
    nsys
        The nsys executable; by default the one :func:`stagemfu.collect.nsys.find_nsys` finds.
    capture
        ``all`` (default), ``nvtx:NAME[@DOMAIN]`` or ``cudaProfilerApi``.
    extra_nsys_args
        More ``nsys profile`` arguments, after stagemfu's own (so they override them).
    options
        The tracing flags (``--trace``, ``--sample``, ``--cpuctxsw``, ``--cuda-graph-trace``).
    name
        Base name of the output files.

    Returns
    -------
    CollectResult
        Never raises for a failing command: its status is in ``exit_status``.

    Raises
    ------
    CollectError
        nsys is not found or cannot be started, or the options do not fit together.
    """
    plan = plan_collection(
        command,
        out_dir=out_dir,
        nsys=nsys,
        capture=capture,
        extra_nsys_args=extra_nsys_args,
        options=options,
        name=name,
    )
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        counted = Path(out_dir) / schemas.FLOPS_FILE  # stagemfu.count_flops writes it there during the run
        for stale in (plan.rep, plan.rep.with_suffix(".qdstrm"), plan.sqlite, plan.run_json, counted):
            stale.unlink(missing_ok=True)  # an earlier run's files must not pass for this run's
    except OSError as err:
        raise CollectError(f"{out_dir}: cannot prepare the output directory ({err.strerror})") from err
    version = nsys_version(plan.nsys)
    started = datetime.now(timezone.utc)
    status, interrupted = run_forwarding_signals(
        list(plan.profile), env={**os.environ, schemas.OUT_DIR_ENV: str(Path(out_dir).resolve())}
    )
    finished = datetime.now(timezone.utc)
    sqlite, notes = _export(plan)
    files = {"rep": plan.rep.name if plan.rep.is_file() else None, "sqlite": sqlite.name if sqlite else None}
    document = run_document(
        command=list(command),
        nsys_command=list(plan.profile),
        nsys_version=version,
        capture=capture,
        exit_status=status,
        interrupted=interrupted,
        started=started,
        finished=finished,
        files=files,
        notes=notes,
    )
    write_run_json(plan.run_json, document)
    return CollectResult(
        rep=plan.rep, sqlite=sqlite, run_json=plan.run_json, exit_status=status, notes=notes, interrupted=interrupted
    )


def _export(plan: CollectPlan) -> tuple[Path | None, tuple[str, ...]]:
    """Export the report and check the result; a failed or garbage export leaves no NAME.sqlite."""
    if not plan.rep.is_file():
        qdstrm = plan.rep.with_suffix(".qdstrm")
        if qdstrm.is_file():
            return None, (
                f"{qdstrm}: nsys wrote only the raw stream, no .nsys-rep: its QdstrmImporter is missing or "
                "failed; use a full Nsight Systems install (see --nsys) or convert it with `QdstrmImporter -i FILE`",
            )
        return None, (f"{plan.rep}: nsys wrote no report; see its messages above",)
    from stagemfu.postprocess.export import check_export

    how_to = f"run `{shlex.join(plan.export)}` yourself"
    work = plan.sqlite.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        work.mkdir()
        made = work / plan.sqlite.name
        export_report(plan.nsys, plan.rep, made, how_to=how_to)
        check_export(made, plan.rep, made_by="`nsys export`")
        os.replace(made, plan.sqlite)
    except ExportError as err:
        return None, (str(err),)
    except OSError as err:
        return None, (f"{plan.sqlite}: cannot be written ({err.strerror}); {how_to}",)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return plan.sqlite, ()


def run_forwarding_signals(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, bool]:
    """Run ``argv`` to its end (in ``env``, by default ours), passing Ctrl-C and SIGTERM on to it.

    The child runs in its own session, so a terminal's Ctrl-C reaches it once, through us, and
    never kills this process before the report is finalized.

    Returns
    -------
    ``(exit_status, interrupted)``.

    Raises
    ------
    CollectError
        The program cannot be started.
    """
    try:
        child = subprocess.Popen(argv, start_new_session=True, env=env)
    except OSError as err:
        raise CollectError(f"{argv[0]}: cannot be run ({err.strerror}); check --nsys or $NSYS") from err
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with suppress(ProcessLookupError):  # it has just ended
            os.killpg(child.pid, signum)

    with _handling(FORWARDED_SIGNALS, forward):
        status = child.wait()
    return status, bool(received)


@contextmanager
def _handling(signums: tuple[int, ...], handler: object) -> Iterator[None]:
    """Install ``handler`` for ``signums`` while the block runs (only the main thread can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
