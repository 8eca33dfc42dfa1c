"""Where the commands' results go, made safe once for every command.

- Files (``-o``, ``--html``) are written whole or not at all (:func:`stagemfu.files.replacing`)
  and never over a file the command reads: the inputs it names are checked before any work
  (:func:`check_files`), and every file the command opened for reading, including those it
  found by itself (``shapes.json`` beside a trace, a config a ``run.json`` names), is checked
  again just before the write (:func:`recording_reads`, through a Python audit hook).
- Standard output that fails gives one ``Error:`` line (``/dev/full``: no space) or, for a
  reader that went away (``| head``), a quiet exit with status 141 as a program killed by
  SIGPIPE has (:func:`guarded_stdout`).
- SIGTERM ends a command like Ctrl-C does, by an exception, so temporary files are removed on
  the way out (:func:`terminating_on_sigterm`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn, TextIO

from stagemfu.errors import OutputError, StagemfuError
from stagemfu.files import input_problem, refuse_overwriting, write_output

PIPE_CLOSED_STATUS = 128 + signal.SIGPIPE  # what a shell reports for a program killed by SIGPIPE
_reads: set[str] | None = None  # files opened for reading by the running command
_hooked = False


class StdoutClosed(Exception):
    """The reader of standard output went away (``stagemfu ... | head``)."""


def check_files(
    *, inputs: Mapping[str, Iterable[str | Path | None] | str | Path | None], outputs: Mapping[str, Path | None]
) -> None:
    """Check a command's files before it does any work.

    Parameters
    ----------
    inputs
        Option or argument name (``"--flops"``, ``"TRACE"``) -> the path(s) it names. A path that
        exists must be a regular file or a directory; a missing one is left to the reader, which
        names it.
    outputs
        Option name -> path written (None: not written). None may be an input's file.

    Raises
    ------
    StagemfuError
        An input is a FIFO, a device or a socket (reading it would block or never end).
    OutputError
        An output is an input, through any link, or two outputs are one file.
    """
    named = [(option, Path(p)) for option, paths in inputs.items() for p in _paths(paths)]
    for option, path in named:
        problem = input_problem(path)
        if problem is not None and problem != "no such file" and problem != "is a directory":
            raise StagemfuError(f"{_label(option, path)}: {problem}")
    refuse_overwriting(outputs, [path for _, path in named])


def _paths(paths: Iterable[str | Path | None] | str | Path | None) -> list[str | Path]:
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [paths]
    return [p for p in paths if p is not None]


def _label(option: str, path: Path) -> str:
    return f"{option} {path}" if option.startswith("-") else str(path)


def emit(text: str | Iterable[bytes], output: Path | None, *, option: str = "-o") -> None:
    """Write ``text`` to the file ``output`` (whole or not at all), or to standard output when None.

    ``text`` may also be chunks of UTF-8 bytes, written as they come (a JSON document of a
    million rows, :mod:`stagemfu.report.render.json_stream`); each chunk holds whole characters.

    Raises
    ------
    OutputError
        ``output`` is a file this command has read, or it cannot be written.
    """
    if output is None:
        for piece in [text] if isinstance(text, str) else text:
            sys.stdout.write(piece if isinstance(piece, str) else piece.decode("utf-8"))
        sys.stdout.flush()
        return
    _refuse_files_read(option, output)
    try:
        write_output(output, text)
    except OSError as err:
        raise OutputError(f"{output}: cannot write ({err.strerror}); choose another output file") from err


def _refuse_files_read(option: str, output: Path) -> None:
    refuse_overwriting({option: output}, files_read())


def files_read() -> list[str]:
    """The files the running command has opened for reading so far (see :func:`recording_reads`)."""
    return sorted(_reads or ())


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Record the files opened for reading while a command runs (see :func:`recording_reads`)."""
    if event != "open" or _reads is None:
        return
    path, _mode, flags = args
    if isinstance(path, int) or flags is None:
        return
    if flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR):
        with suppress(TypeError, ValueError):
            _reads.add(os.path.abspath(os.fsdecode(path)))


@contextmanager
def recording_reads() -> Iterator[None]:
    """Record every file opened for reading from Python while the block runs.

    An audit hook cannot be removed, so one is installed per process and records only inside
    this block; it costs a function call per ``open``.
    """
    global _reads, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    _reads = set()
    try:
        yield
    finally:
        _reads = None


class _GuardedStream:
    """``sys.stdout`` for the length of a command: a failed write raises a one-line error.

    Once a write failed, every later write and flush raises again: click's stream probing
    swallows exceptions, and the final flush of :class:`~stagemfu.cli.StagemfuGroup` must
    still see the failure.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._error: OSError | None = None

    def write(self, text: str) -> int:
        self._raise_if_failed()
        try:
            return self._stream.write(text)
        except OSError as err:
            self._fail(err)

    def flush(self) -> None:
        self._raise_if_failed()
        try:
            self._stream.flush()
        except OSError as err:
            self._fail(err)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _fail(self, err: OSError) -> NoReturn:
        """Point standard output at /dev/null (so the exit's flush is quiet), then raise what it means."""
        self._error = err
        with suppress(AttributeError, OSError, ValueError):
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        raise self._translated(err) from None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._translated(self._error)

    @staticmethod
    def _translated(err: OSError) -> Exception:
        if isinstance(err, BrokenPipeError):
            return StdoutClosed()
        return OutputError(f"standard output: cannot write ({err.strerror}); write to a file with -o instead")


@contextmanager
def guarded_stdout() -> Iterator[None]:
    """Replace ``sys.stdout`` by a :class:`_GuardedStream` while the block runs."""
    original = sys.stdout
    sys.stdout = _GuardedStream(original)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = original


@contextmanager
def terminating_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` while the block runs, so cleanup code runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
