"""A torch.profiler (Kineto) Chrome-trace JSON file read in blocks, as the texts of its events.

Why not ``json.load``: a trace of a few training steps holds millions of events, and as Python
objects they take several times the file's size (HolisticTraceAnalysis needs about six; users
report 950 GB of memory for a 200 GB file). Here the file, decompressed on the fly when it is
gzip, xz or bzip2, passes through a buffer of a few MiB. A structural scan in numpy finds in each
buffer where the strings are (real quotes: a quote after an odd run of backslashes is part of the
string) and the depth of every brace and bracket outside them; the objects directly inside the
top-level ``traceEvents`` array are the events. The complete events of a buffer become one polars
string column, which :mod:`.events` reduces to numbers at once; what follows the last complete
event moves to the front of the buffer and is scanned again after the next read. Everything
outside ``traceEvents`` (``deviceProperties``, ``distributedInfo``, versions: a few KiB) is kept
and parsed with :mod:`json` at the end.

The scan checks the structure it relies on (an object at the top, objects in ``traceEvents``,
only commas and white space between them, the array closed before the file ends) and raises a
one-line :class:`~stagemfu.errors.TraceError` otherwise; what is inside each event is checked by
the regular expressions that read it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl

from stagemfu.errors import TraceError
from stagemfu.postprocess.formats import COMPRESSIONS, READ_ERRORS, unreadable
from stagemfu.postprocess.trace import Progress

# Read at a time; the events of a block are handled together. A block's work arrays take several times
# its size, most of the memory a trace of a few hundred MiB needs: 1 MiB keeps the peak at 150 MiB on
# 114 MiB of JSON (200 MiB with 4 MiB blocks); a large trace takes twice as long (docs/benchmarks.md).
BLOCK_BYTES = 1 << 20
MAX_EVENT_BYTES = 256 << 20  # a single event larger than this is refused (the buffer grows to hold one)
MAX_HEADER_BYTES = 64 << 20  # the document outside traceEvents (a few KiB in a real trace)
QUOTE, BACKSLASH = ord('"'), ord("\\")
SEPARATOR = 0x1E  # put between the events of a block to split them apart
BOM = b"\xef\xbb\xbf"
OPENERS, CLOSERS = (ord("{"), ord("[")), (ord("}"), ord("]"))
EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
SPACE = np.zeros(256, dtype=bool)
SPACE[[ord(c) for c in " \t\r\n"]] = True
GAP = SPACE.copy()  # what may stand between two events
GAP[ord(",")] = True
NOT_KINETO = "is JSON but not a torch.profiler (Kineto) trace"
AGAIN = "copy or export it again"
HOW = "export one with `prof.export_chrome_trace(PATH)` or torch.profiler.tensorboard_trace_handler"


def scan_events(
    path: Path,
    on_events: Callable[[pl.Series], None],
    *,
    block_bytes: int = BLOCK_BYTES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Hand the events of a Kineto trace to ``on_events``, a block at a time, in file order.

    Parameters
    ----------
    path
        The trace: JSON, or JSON compressed with gzip, xz or bzip2 (recognised by content).
    on_events
        Called with each block's events: a string column, one event's JSON text per row (with
        trailing white space).
    block_bytes
        How much to read at a time.
    progress
        ``progress("reading NAME", bytes read, file size)`` after each block (bytes of the file
        as stored, compressed or not).

    Returns
    -------
    dict
        The document without its events (``traceEvents`` empty): ``deviceProperties``,
        ``distributedInfo``, ``schemaVersion`` and whatever else the trace records.

    Raises
    ------
    TraceError
        The file cannot be read or decompressed (cut short, damaged), is not JSON of a Kineto
        trace's shape, or holds an event larger than ``MAX_EVENT_BYTES``.
    """
    size = path.stat().st_size
    with path.open("rb") as raw:
        reader = _Reader(path, raw, block_bytes)
        prefix = reader.head()
        while True:
            if progress:
                progress(f"reading {path.name}", raw.tell(), size)
            texts, tail = reader.events()
            if texts is not None:
                on_events(texts)
            if tail is not None:
                break
            if reader.eof:
                raise TraceError(f"{path}: ends inside its traceEvents array: the file is cut short; {AGAIN}")
            reader.refill()
        tail += reader.rest(MAX_HEADER_BYTES - len(prefix) - len(tail))
    try:
        header = json.loads(prefix + tail)
    except (ValueError, RecursionError) as err:
        raise TraceError(f"{path}: {NOT_KINETO}: what surrounds traceEvents is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise TraceError(f"{path}: {NOT_KINETO}: its top level is not an object; {HOW}")
    return header


class _Reader:
    """The buffer: bytes read and not yet handed on, starting outside every string."""

    def __init__(self, path: Path, raw: BinaryIO, block_bytes: int) -> None:
        self.path = path
        self.buf = bytearray(block_bytes)
        self.have = 0
        self.eof = False
        with self._reading():
            magic = raw.read(8)
            raw.seek(0)
            opener = next((o for m, o in COMPRESSIONS.items() if magic.startswith(m)), None)
            self.fh = opener(raw, "rb") if opener else raw
        self.refill()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A damaged or truncated file (or compressed stream) is one line naming the file."""
        try:
            yield
        except READ_ERRORS as err:
            raise unreadable(self.path, err) from err

    def refill(self) -> None:
        """Read until the buffer is full or the file ends; a full buffer grows first (one event
        larger than the buffer)."""
        if self.have == len(self.buf):
            if len(self.buf) >= MAX_EVENT_BYTES:
                raise TraceError(
                    f"{self.path}: holds an event larger than {MAX_EVENT_BYTES >> 20} MiB; is the file damaged?"
                )
            self.buf.extend(bytes(len(self.buf)))
        with self._reading(), memoryview(self.buf) as whole:
            while self.have < len(self.buf) and not self.eof:
                with whole[self.have :] as free:
                    n = self.fh.readinto(free)
                self.have += n
                self.eof = n == 0

    def rest(self, limit: int) -> bytes:
        """The rest of the file after the buffer's bytes: at most ``limit`` bytes, the end of the document."""
        with self._reading():
            more = b"" if self.eof else self.fh.read(limit + 1)
        if len(more) > limit:
            raise TraceError(f"{self.path}: {NOT_KINETO}: more than {MAX_HEADER_BYTES >> 20} MiB outside traceEvents")
        return more

    def drop(self, n: int) -> None:
        """Forget the first ``n`` bytes (handed on)."""
        self.buf[: self.have - n] = self.buf[n : self.have]
        self.have -= n

    def head(self) -> bytes:
        """Everything up to and including the ``[`` that opens traceEvents; the buffer then starts
        just after it."""
        while True:
            at = _events_array(np.frombuffer(self.buf, dtype=np.uint8, count=self.have), self.path)
            if at is not None:
                prefix = bytes(self.buf[:at])
                self.drop(at)
                return prefix.removeprefix(BOM)
            if self.eof or self.have > MAX_HEADER_BYTES:
                where = "" if self.eof else f" in its first {MAX_HEADER_BYTES >> 20} MiB"
                raise TraceError(f"{self.path}: {NOT_KINETO}: it has no traceEvents array{where}; {HOW}")
            self.refill()

    def events(self) -> tuple[pl.Series | None, bytes | None]:
        """The complete events in the buffer (None when there is none yet), and, once the buffer
        holds the end of traceEvents, the bytes from its ``]`` on."""
        b = np.frombuffer(self.buf, dtype=np.uint8, count=self.have)
        pos, after, _ = _structure(b, depth=2)
        closing = _closing(b[pos])
        opens = pos[(after == 3) & ~closing]
        ends = pos[(after == 2) & closing]
        out = np.flatnonzero(after < 2)
        close = int(pos[out[0]]) if len(out) else None
        if close is not None:
            opens, ends = opens[opens < close], ends[ends < close]
        n = len(ends)
        if (b[opens] != ord("{")).any() or (b[ends] != ord("}")).any():
            raise TraceError(f"{self.path}: {NOT_KINETO}: traceEvents holds something other than objects; {HOW}")
        starts = opens[:n]
        # Handed on: up to the array's end; else up to an event begun but not complete; else all
        # (white space and commas only after the last event). The bytes between events are checked
        # up to there.
        pending = int(opens[n]) if len(opens) > n else self.have
        cut = close if close is not None else pending
        gaps = _gaps(b, starts, ends, cut, self.path)
        texts = _texts(b, starts, ends, gaps) if n else None
        del b
        tail = bytes(self.buf[cut : self.have]) if close is not None else None
        self.drop(cut)
        return texts, tail


def _structure(b: np.ndarray, *, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the braces and brackets outside strings, the nesting depth after each, and the
    positions of the real quotes.

    ``b`` starts outside every string at depth ``depth``. A quote is real unless an odd run of
    backslashes precedes it; between the 2k-th and (2k+1)-th real quote is a string.
    """
    quotes = np.flatnonzero(b == QUOTE)
    slashes = np.flatnonzero(b == BACKSLASH)
    if len(slashes) and len(quotes):
        quotes = quotes[~_escaped(quotes, slashes)]
    mark = b == OPENERS[0]
    for c in (*OPENERS[1:], *CLOSERS):
        mark |= b == c
    pos = np.flatnonzero(mark)
    pos = pos[(np.searchsorted(quotes, pos) & 1) == 0]
    step = np.where(_closing(b[pos]), -1, 1)
    return pos, depth + np.cumsum(step), quotes


def _closing(chars: np.ndarray) -> np.ndarray:
    """For braces and brackets, True for ``}`` and ``]``: they have bit 2 set, ``{`` and ``[`` do not."""
    return (chars & 4) != 0


def _escaped(quotes: np.ndarray, slashes: np.ndarray) -> np.ndarray:
    """For each quote, True when an odd run of backslashes ends just before it."""
    first = np.ones(len(slashes), dtype=bool)
    first[1:] = np.diff(slashes) != 1
    run_start = slashes[first][np.cumsum(first) - 1]  # for each backslash, where its run starts
    at = np.minimum(np.searchsorted(slashes, quotes - 1), len(slashes) - 1)
    after_slash = slashes[at] == quotes - 1
    return after_slash & ((quotes - run_start[at]) % 2 == 1)


def _events_array(b: np.ndarray, path: Path) -> int | None:
    """Where traceEvents' items begin (just after its ``[``), once ``b`` holds that far."""
    lead = b[:8192][~SPACE[b[:8192]]]
    if len(lead) and lead[0] != ord("{") and bytes(lead[:3]) != BOM:
        raise TraceError(f"{path}: {NOT_KINETO}: its top level is not an object; {HOW}")
    pos, after, quotes = _structure(b, depth=0)
    for m in EVENTS_KEY.finditer(b.data):
        at = np.searchsorted(pos, m.start())
        depth = int(after[at - 1]) if at else 0
        if depth == 1 and np.searchsorted(quotes, m.start()) % 2 == 0:
            return m.end()
    return None


def _gaps(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, stop: int, path: Path) -> np.ndarray:
    """Positions of the bytes before, between and after the events up to ``stop``: only white space
    and commas may stand there."""
    lo = np.concatenate([[0], ends + 1])
    hi = np.concatenate([starts, [stop]])
    sizes = np.maximum(hi - lo, 0)
    total = int(sizes.sum())
    index = np.repeat(lo - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(total)
    bad = np.flatnonzero(~GAP[b[index]])
    if len(bad):
        at = int(index[bad[0]])
        raise TraceError(
            f"{path}: {NOT_KINETO}: traceEvents holds something other than objects "
            f"({bytes(b[at : at + 20]).decode('utf-8', 'replace')!r}); {HOW}"
        )
    return index


def _texts(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, gaps: np.ndarray) -> pl.Series:
    """The events' texts as one string column, each from its ``{`` up to the next event.

    The bytes between events are blanked, but for one before each event, which becomes a
    record separator (0x1E: a control character that JSON text never holds raw) to split on.
    Bytes that are not UTF-8 read as replacement characters.
    """
    lo, hi = int(starts[0]), int(ends[-1]) + 1
    region = b[lo:hi].copy()
    region[gaps[(gaps >= lo) & (gaps < hi)] - lo] = ord(" ")
    region[starts[1:] - lo - 1] = SEPARATOR
    text = region.tobytes().decode("utf-8", "replace")
    del region
    return pl.Series("event", [text]).str.split(chr(SEPARATOR)).explode()
