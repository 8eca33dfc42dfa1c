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
    frame = texts.to_frame("event").with_columns(role=ROLE)
    role = frame["role"]
    metadata = frame.filter(role.is_null()).filter(IS_PROCESS_NAME)
    return Block(
        ops=_unescaped(_timed(frame.filter(role.is_in(OP_ROLES)), OP_COLUMNS)),
        calls=_timed(frame.filter(role == "call"), CALL_COLUMNS).filter(pl.col("correlation_id").is_not_null()),
        ranges=_unescaped(_timed(frame.filter(role == "range"), RANGE_COLUMNS)),
        op_ranges=_unescaped(_timed(frame.filter(role == "op") if op_ranges else frame.clear(), ATEN_COLUMNS)).select(
            OP_RANGE_NAME, "start", "end", "pid", "tid"
        ),
        processes=_unescaped(metadata.select(PROCESS_COLUMNS)).drop_nulls(),
    )


def _timed(frame: pl.DataFrame, columns: list[pl.Expr | str]) -> pl.DataFrame:
    """``columns`` of ``frame``, which may use ``start`` (``ts``) and ``end`` (``ts`` + ``dur``) in ns."""
    return frame.with_columns(**TIME_TEXTS).with_columns(**TIMES).with_columns(END).select(columns)


def _field(key: str, value: str) -> pl.Expr:
    """The first value of ``key`` in each event, as text (null when absent or of another type)."""
    return pl.col("event").str.extract(rf'"{key}"\s*:\s*{value}', 1)


def _integer(key: str) -> pl.Expr:
    """An integer field (a number, or a string of digits), as Int64; null when it is neither."""
    return _field(key, INTEGER).cast(pl.Int64, strict=False).alias(key)


def _field_after(before: str, value: str) -> pl.Expr:
    """The value (pattern ``value``) that follows the pattern ``before`` in each event, as text."""
    return pl.col("event").str.extract(before + value, 1)


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
    """``frame`` with its ``name`` column (a JSON string's text between the quotes) unescaped; a
    string with a malformed escape is kept as written."""
    escaped = frame["name"].str.contains("\\", literal=True)
    if not escaped.any():  # the usual case: no name to decode
        return frame
    quoted = pl.concat_str(pl.lit('"'), pl.col("name"), pl.lit('"'))
    decode = escaped & frame.select(quoted.str.contains(VALID_STRING)).to_series()
    # json_decode parses every row it is given: only the valid strings with escapes, the others are null.
    decoded = frame.select(pl.when(decode).then(quoted).str.json_decode(pl.String)).to_series()
    return frame.with_columns(name=pl.when(decode).then(decoded).otherwise(pl.col("name")))


def _op_range_name() -> pl.Expr:
    """An aten op's name as ``emit_nvtx`` names its range, so the op-FLOP registry reads it unchanged:
    ``aten::mm, op_id = 7, sizes = [[4, 8], [8, 2]]`` (from columns ``name``, ``op_id`` and ``dims``,
    Kineto's ``Input Dims``: a list of shapes given as one argument is flattened in place, as
    emit_nvtx does; no sizes without ``record_shapes``)."""
    dims = pl.col("dims").str.replace_all(r",\s*", ", ").str.strip_chars()
    inner = dims.str.slice(1, dims.str.len_bytes() - 2).str.replace_all(TENSOR_LIST, "$1")
    sizes = pl.concat_str(pl.lit(", sizes = ["), inner, pl.lit("]"))
    return pl.concat_str("name", pl.lit(", op_id = "), pl.col("op_id").fill_null("0"), sizes.fill_null("")).alias(
        "name"
    )


# The expressions each block runs, built once.
ROLE = _field("cat", CATEGORY).replace_strict(ROLES, default=None)
IS_PROCESS_NAME = pl.col("event").str.contains(r'"name"\s*:\s*"process_name"')
TIME_TEXTS = {"_ts": _field("ts", NUMBER), "_dur": _field("dur", NUMBER)}
TIMES = {"start": to_ns("_ts"), "end": to_ns("_dur")}
END = pl.col("end") + pl.col("start")  # Kineto's end: ts + dur
NAME = _field("name", STRING).alias("name")
THREAD = [_integer("pid"), _integer("tid")]
CORRELATION = _integer("correlation").alias("correlation_id")
OP_COLUMNS = [
    pl.col("role").cast(OP_KIND_TYPE).alias("kind"),
    "start",
    "end",
    _integer("device").cast(pl.Int32, strict=False),
    _integer("stream").cast(pl.Int32, strict=False),
    CORRELATION,
    NAME,
]
CALL_COLUMNS = ["start", "end", *THREAD, CORRELATION]
RANGE_COLUMNS = [NAME, "start", "end", *THREAD]
ATEN_COLUMNS = [
    NAME,
    "start",
    "end",
    *THREAD,
    _field("External id", INTEGER).alias("op_id"),
    _field("Input Dims", DIMS).alias("dims"),
]
OP_RANGE_NAME = _op_range_name()
PROCESS_COLUMNS = [_integer("pid"), _field_after(r'"args"\s*:\s*\{\s*"name"\s*:\s*', STRING).alias("name")]
