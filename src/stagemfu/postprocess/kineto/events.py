"""A block of Kineto events (their JSON texts) reduced to the columns the trace contract needs.

Each event's role comes from its category (``cat``; PyTorch 1.9-era traces capitalise them):
GPU operations (``kernel``, ``gpu_memcpy``, ``gpu_memset``), the CPU calls that launched them
(``cuda_runtime``, ``cuda_driver``: the same ``correlation`` id in ``args``), stage ranges
(``user_annotation``: ``record_function``, the optimizer's own annotations, ``ProfilerStep#N``),
aten ops (``cpu_op``, read only when asked, for op FLOPs) and the process names of the
``process_name`` metadata events. Every other event (flows, Python functions, overhead, GPU-side
copies of annotations) is dropped after reading its category.

Fields are read with regular expressions over the texts, in polars, one column at a time: only
the fields a role needs, and each at its first occurrence in the event (Kineto writes an event's
own keys before its ``args``). A JSON string cannot hold an unescaped quote, so a key's pattern
never matches inside a string value. A field that is missing or of the wrong type reads as null.

Times. Kineto writes microseconds with three decimals (``"ts": 5545351487731.043``); as a float
that is 5.5e15 ns, and epoch-based traces (1.7e18 ns) lose the nanoseconds entirely in a float64.
So times are converted from their decimal text: whole microseconds times 1000 plus the decimals,
rounded to the nearest nanosecond (halves away from zero) when a trace writes more than three.
Only numbers in exponent form go through a float.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from stagemfu.postprocess.trace import OP_KIND_TYPE

# Kineto's event categories -> what the event is to the reader.
ROLES = {
    "kernel": "kernel",
    "gpu_memcpy": "memcpy",
    "memcpy": "memcpy",
    "gpu_memset": "memset",
    "memset": "memset",
    "cuda_runtime": "call",
    "runtime": "call",
    "cuda_driver": "call",
    "user_annotation": "range",
    "cpu_op": "op",
    "operator": "op",
}
ROLES.update({k.capitalize(): v for k, v in ROLES.items()})  # PyTorch 1.9: "Kernel", "Runtime", "Operator"
OP_ROLES = ("kernel", "memcpy", "memset")
STRING = r'"((?:[^"\\]|\\.)*)"'  # a JSON string: what is between its quotes, escapes as written
CATEGORY = r'"([^"\\]*)"'  # a category: a string without escapes
INTEGER = r'"?(-?\d{1,18})"?\s*[,}\]]'  # a number, or a string holding one (PyTorch 1.9 wrote "tid": "123")
NUMBER = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*[,}\]]"
DIMS = r"(\[[\[\]\d,\s]*\])"  # "Input Dims": a list of shapes
VALID_STRING = r'^"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"$'
EXACT_LIMIT = 9 * 10**15  # whole microseconds below this convert to ns exactly in an int64
TENSOR_LIST = r"\[(\[[\d, ]*\](?:, \[[\d, ]*\])*)\]"  # a list of shapes given as one argument


@dataclass(frozen=True)
class Block:
    """The events of one block, by role.

    Attributes
    ----------
    ops
        ``kind``, ``start``, ``end``, ``device``, ``stream``, ``correlation_id``, ``name`` (which
        :class:`stagemfu.postprocess.kineto.build.Collector` replaces by a ``name_id``).
    calls
        ``start``, ``end``, ``pid``, ``tid``, ``correlation_id`` (calls without one are left out).
    ranges
        ``name``, ``start``, ``end``, ``pid``, ``tid``.
    op_ranges
        Like ``ranges``, named as ``emit_nvtx`` names its op ranges (``aten::mm, op_id = 7, sizes
        = [[4, 8], [8, 2]]``); empty unless asked for.
    processes
        ``pid``, ``name`` from ``process_name`` metadata events.
    """

    ops: pl.DataFrame
    calls: pl.DataFrame
    ranges: pl.DataFrame
    op_ranges: pl.DataFrame
    processes: pl.DataFrame


def read_block(texts: pl.Series, *, op_ranges: bool = False) -> Block:
    """Sort a block's events by role and read the fields each role needs.

    Parameters
    ----------
    texts
        One event's JSON text per row (from :func:`stagemfu.postprocess.kineto.scan.scan_events`).
    op_ranges
        Also read the aten ops (``cpu_op``) as op ranges.
    """
    frame = texts.to_frame("event").with_columns(role=_field("cat", CATEGORY).replace_strict(ROLES, default=None))
    metadata = frame.filter(pl.col("role").is_null()).filter(
        pl.col("event").str.contains('"process_name"', literal=True)
        & pl.col("event").str.contains(r'"name"\s*:\s*"process_name"')
    )
    role = pl.col("role")
    ops = _timed(frame.filter(role.is_in(OP_ROLES)), name=True).select(
        role.cast(OP_KIND_TYPE).alias("kind"),
        "start",
        "end",
        _integer("device").cast(pl.Int32, strict=False),
        _integer("stream").cast(pl.Int32, strict=False),
        _integer("correlation").alias("correlation_id"),
        "name",
    )
    calls = _timed(frame.filter(role == "call")).select(
        "start", "end", *_thread(), _integer("correlation").alias("correlation_id")
    )
    ranges = _timed(frame.filter(role == "range"), name=True).select("name", "start", "end", *_thread())
    aten = _timed(frame.filter(role == "op") if op_ranges else frame.clear(), name=True).select(
        _op_range_name(), "start", "end", *_thread()
    )
    processes = _unescaped(
        metadata.select(_integer("pid"), _field_after(r'"args"\s*:\s*\{\s*"name"\s*:\s*', STRING).alias("name"))
    )
    return Block(
        ops=ops,
        calls=calls.filter(pl.col("correlation_id").is_not_null()),
        ranges=ranges,
        op_ranges=aten,
        processes=processes.drop_nulls(),
    )


def _field(key: str, value: str) -> pl.Expr:
    """The first value of ``key`` in each event, as text (null when absent or of another type)."""
    return pl.col("event").str.extract(rf'"{key}"\s*:\s*{value}', 1)


def _integer(key: str) -> pl.Expr:
    """An integer field (a number, or a string of digits), as Int64; null when it is neither."""
    return _field(key, INTEGER).cast(pl.Int64, strict=False).alias(key)


def _field_after(before: str, value: str) -> pl.Expr:
    """The value (pattern ``value``) that follows the pattern ``before`` in each event, as text."""
    return pl.col("event").str.extract(before + value, 1)


def _timed(frame: pl.DataFrame, *, name: bool = False) -> pl.DataFrame:
    """``frame`` with ``start`` (``ts``) and ``end`` (``ts`` + ``dur``) in integer ns, and with ``name``
    (escapes resolved) when asked."""
    texts = {"_ts": _field("ts", NUMBER), "_dur": _field("dur", NUMBER)}
    frame = frame.with_columns(**texts, **({"name": _field("name", STRING)} if name else {}))
    frame = frame.with_columns(start=to_ns("_ts"), end=to_ns("_dur"))
    frame = frame.with_columns(pl.col("end") + pl.col("start")).drop("_ts", "_dur")
    return _unescaped(frame) if name else frame


def _thread() -> tuple[pl.Expr, pl.Expr]:
    """``pid`` and ``tid`` of a CPU event."""
    return _integer("pid"), _integer("tid")


def to_ns(column: str) -> pl.Expr:
    """Microseconds written in decimal (``"5545351487731.043"``, a text column) as integer nanoseconds.

    Exact for plain decimals: whole microseconds times 1000 plus the decimals, rounded to the
    nearest nanosecond (halves away from zero) past the third; a number in exponent form, or too
    large for exact arithmetic, goes through a float; null when it is no number or out of range.
    """
    text = pl.col(column)
    parts = text.str.split_exact(".", 1)
    whole = parts.struct.field("field_0").cast(pl.Int64, strict=False)
    decimals = parts.struct.field("field_1")
    tenths = decimals.fill_null("").str.pad_end(4, "0").str.slice(0, 4).cast(pl.Int64, strict=False)
    digits = decimals.is_null() | decimals.str.contains(r"^\d+$")
    magnitude = whole.abs() * 1000 + (tenths + 5) // 10
    exact = pl.when(digits & (whole.abs() < EXACT_LIMIT)).then(
        pl.when(text.str.starts_with("-")).then(-magnitude).otherwise(magnitude)
    )
    floated = text.cast(pl.Float64, strict=False) * 1000
    approx = pl.when(floated.abs() < 2.0**62).then(floated.round()).cast(pl.Int64, strict=False)
    return pl.coalesce(exact, approx)


def _unescaped(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its ``name`` column (a JSON string's text between the quotes) unescaped."""
    quoted = pl.concat_str(pl.lit('"'), pl.col("name"), pl.lit('"'))
    frame = frame.with_columns(_decode=pl.col("name").str.contains("\\", literal=True))
    if not frame["_decode"].any():
        return frame.drop("_decode")
    frame = frame.with_columns(_decode=pl.col("_decode") & quoted.str.contains(VALID_STRING))
    # json_decode parses every row it is given: rows without escapes give it an empty string.
    decoded = pl.when(pl.col("_decode")).then(quoted).otherwise(pl.lit('""')).str.json_decode(pl.String)
    return frame.with_columns(name=pl.when(pl.col("_decode")).then(decoded).otherwise(pl.col("name"))).drop("_decode")


def _op_range_name() -> pl.Expr:
    """An aten op's name as ``emit_nvtx`` names its range, so the op-FLOP registry reads it unchanged:
    ``aten::mm, op_id = 7, sizes = [[4, 8], [8, 2]]`` (sizes as Kineto's ``Input Dims``, a list of
    shapes given as one argument flattened in place, as emit_nvtx does; no sizes without
    ``record_shapes``)."""
    dims = _field("Input Dims", DIMS).str.replace_all(r",\s*", ", ").str.strip_chars()
    inner = dims.str.slice(1, dims.str.len_bytes() - 2).str.replace_all(TENSOR_LIST, "$1")
    sizes = pl.concat_str(pl.lit(", sizes = ["), inner, pl.lit("]"))
    op_id = _field("External id", INTEGER).fill_null("0")
    return pl.concat_str("name", pl.lit(", op_id = "), op_id, sizes.fill_null("")).alias("name")
