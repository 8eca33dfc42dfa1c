"""The user's files: inputs are read only when they are regular files, outputs never replace an
input, and every output appears whole or not at all.

Why: a command that writes ``-o`` over its own trace destroys the data it was asked to measure; a
FIFO or a device read as a trace blocks forever; and a write cut short (a full disk, Ctrl-C) must
not leave half a report where the old one was. Files are compared by identity (device and inode),
so a symbolic or hard link to an input is the input.
"""

from __future__ import annotations

import os
import secrets
import stat
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from stagemfu.errors import OutputError

TEMP_PREFIX = ".stagemfu-tmp-"  # a write in progress; never a finished file
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def input_problem(path: str | os.PathLike[str]) -> str | None:
    """What keeps ``path`` from being read as an input file, or None when it is a regular file.

    The answer completes a sentence that starts with the path ("no such file", "is a
    directory", "is a FIFO (named pipe), not a regular file; ..."). Only regular files pass: a
    FIFO, a device or a socket would block a reader or never end.
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "no such file"
    except ValueError:  # an embedded NUL byte
        return "is not a valid file name"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISREG(info.st_mode):
        return None
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
    return f"is {kind}, not a regular file; save the data to a file and pass that"


def sqlite_uri(path: str | os.PathLike[str], query: str = "") -> str:
    """``path`` as an SQLite ``file:`` URI, followed by ``?query`` when given.

    The name's bytes are percent-encoded, so any file name opens, also one that is not UTF-8
    (which Python holds with lone surrogates, and which ``str.encode`` refuses).
    """
    uri = f"file:{urllib.parse.quote(os.fsencode(Path(path).resolve()))}"
    return f"{uri}?{query}" if query else uri


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(device, inode)`` of the file ``path`` names (links followed), or None when there is none."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def refuse_overwriting(outputs: Mapping[str, Path | None], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Raise when an output would replace an input, or two outputs are one file.

    Parameters
    ----------
    outputs
        What each output is called for the user (``"-o"``, ``"--html"``) -> its path (None: not
        written).
    inputs
        Every file the command reads. Missing ones are skipped: they cannot be overwritten.

    Raises
    ------
    OutputError
        Naming the option, the output path and the input it would destroy.
    """
    known = {file_identity(p): Path(p) for p in inputs}
    known.pop(None, None)
    seen: dict[object, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        same = known.get(file_identity(path))
        if same is not None:
            alias = "" if os.path.abspath(same) == os.path.abspath(path) else f", the input {same}"
            raise OutputError(
                f"{option} {path}: is the same file as one of this command's inputs{alias}; writing it would "
                "destroy the input: choose another output file"
            )
        where = file_identity(path) or os.path.realpath(path)  # an existing file by identity: links count
        if where in seen:
            raise OutputError(f"{option} {path}: is also the {seen[where]} output; give each output its own file")
        seen[where] = option


@contextmanager
def replacing_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block ends without an exception.

    For writers that need a path rather than a file (SQLite); :func:`replacing` is the same for a
    file object. The block writes the temporary file, which then replaces ``path`` in one
    ``os.replace``: a reader sees the old file or the whole new one, and an exception, Ctrl-C or
    a full disk leaves ``path`` as it was and no temporary file behind. A symbolic link is
    written through (its target is replaced, the link kept) and an existing file keeps its
    permissions. A path that exists and is not a regular file (``/dev/null``, ``/dev/stdout``, a
    FIFO) is yielded itself, to be written in place: there is nothing to replace.
    """
    target = Path(os.path.realpath(path))
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        yield target
        return
    temp = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{target.name}"[:255])
    try:
        yield temp
        if info is not None:
            os.chmod(temp, stat.S_IMODE(info.st_mode))
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            temp.unlink()
        raise


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` whole, or not at all (see :func:`replacing_path`).

    A new file gets the usual permissions (0666 less the umask), and the data reaches the disk
    (``fsync``) before it replaces the old file.

    Raises
    ------
    OSError
        The directory cannot take the file (missing, read-only, full).
    """
    with replacing_path(path) as temp:
        in_place = not temp.name.startswith(TEMP_PREFIX)
        fd = os.open(temp, os.O_WRONLY | (os.O_TRUNC if in_place else os.O_CREAT | os.O_EXCL), 0o666)
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            if not in_place:
                os.fsync(out.fileno())


def write_output(path: Path, data: str | bytes | Iterable[bytes]) -> None:
    """Write ``data`` to ``path`` whole or not at all (see :func:`replacing`).

    ``data`` is text (written as UTF-8), bytes, or chunks of bytes written as they come: a
    document too large to hold as one string (:mod:`stagemfu.report.render.json_stream`). An
    exception while the chunks are made leaves ``path`` as it was, like a failed write.
    """
    with replacing(path) as out:
        if isinstance(data, (str, bytes)):
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
        else:
            for chunk in data:
                out.write(chunk)
