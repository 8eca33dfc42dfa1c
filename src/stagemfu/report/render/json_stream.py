"""JSON documents that hold row tables, written as a stream of UTF-8 chunks.

Why: the ``stagemfu.postprocess/1`` document of a trace recorded under PyTorch's ``emit_nvtx``
holds a row per operator call in several tables (161 k distinct range names: a million rows).
Turned into Python dicts (``to_dicts``) and then into one string by ``json.dumps``, it took 27 s
and 3.8 GB on the 2-core machine for a 447 MB document (docs/benchmarks.md); the numbers
themselves were computed in 2 s. Here a document is a mapping whose values may be polars
frames. A frame is written as an array of row objects, one compact object per line, each batch
of :data:`BATCH_ROWS` rows serialised by polars' own JSON writer: no Python object per row, and
memory holds one batch of text, not the document.

Everything else (the metadata, lists and mappings without frames) is written as
``json.dumps(indent=2, ensure_ascii=False)`` writes it, so a document without frames comes out
byte for byte as :func:`stagemfu.cli.json_text` writes it, and a document with frames parses to
exactly what ``frame.to_dicts()`` in its place would give (``tests/test_json_stream.py``). Text
is escaped by the JSON writers (quotes, backslashes, control characters), so hostile names stay
data; a lone surrogate (a byte of a file name that is not UTF-8, as Python decodes it) is written
as its JSON escape (``\\udcff``), so the output is UTF-8 and parses back to the same string. A
float JSON cannot hold (NaN, an infinity) is written as null, where ``json.dumps`` would write
``NaN``, which no JSON parser but Python's accepts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import polars as pl

# Rows serialised at once: well under a MB of text, so the buffers are reused from the heap; batches
# of 20,000 rows (several MB) were mapped and faulted in anew each time: twice the time, mostly system.
BATCH_ROWS = 2_000
INDENT = "  "


def json_chunks(document: Any) -> Iterator[bytes]:
    """``document`` as UTF-8 JSON, in chunks, with one final newline (see the module docstring)."""
    yield from _value(document, 0)
    yield b"\n"


def _value(value: Any, level: int) -> Iterator[bytes]:
    if isinstance(value, pl.DataFrame):
        yield from _rows(value, level)
    elif isinstance(value, Mapping) and _holds_frame(value):
        items = [(json.dumps(str(k), ensure_ascii=False) + ": ", v) for k, v in value.items()]
        yield from _container("{", "}", items, level)
    elif isinstance(value, (list, tuple)) and _holds_frame(value):
        yield from _container("[", "]", [("", v) for v in value], level)
    else:
        text = json.dumps(value, indent=len(INDENT), ensure_ascii=False)
        yield _utf8(text.replace("\n", "\n" + INDENT * level))


def _container(opening: str, closing: str, items: list[tuple[str, Any]], level: int) -> Iterator[bytes]:
    """A mapping or list laid out as ``json.dumps(indent=2)`` lays it out, each value streamed."""
    if not items:
        yield (opening + closing).encode("utf-8")
        return
    inner = "\n" + INDENT * (level + 1)
    for i, (key, item) in enumerate(items):
        yield _utf8((opening if i == 0 else ",") + inner + key)
        yield from _value(item, level + 1)
    yield ("\n" + INDENT * level + closing).encode("utf-8")


def _rows(frame: pl.DataFrame, level: int) -> Iterator[bytes]:
    """A frame as an array of row objects, one per line, serialised by polars in batches.

    Polars' newline-delimited writer ends every row with a newline and escapes the newlines
    inside strings, so each newline of its output separates two rows.
    """
    if frame.height == 0:
        yield b"[]"
        return
    between = ("\n" + INDENT * (level + 1)).encode("utf-8")
    for i, batch in enumerate(frame.iter_slices(BATCH_ROWS)):
        buffer = io.BytesIO()
        batch.write_ndjson(buffer)
        rows = buffer.getvalue().removesuffix(b"\n").replace(b"\n", b"," + between)
        yield (b"[" if i == 0 else b",") + between + rows
    yield ("\n" + INDENT * level + "]").encode("utf-8")


def _utf8(text: str) -> bytes:
    """JSON text as UTF-8; a lone surrogate, which only a string can hold, as its JSON escape."""
    return text.encode("utf-8", "backslashreplace")


def _holds_frame(value: Any) -> bool:
    """Whether a frame lies anywhere inside ``value`` (only then is it walked here rather than by json)."""
    if isinstance(value, pl.DataFrame):
        return True
    if isinstance(value, Mapping):
        return any(_holds_frame(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_frame(v) for v in value)
    return False
