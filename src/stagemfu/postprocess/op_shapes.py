"""The aten op ranges that ``torch.autograd.profiler.emit_nvtx(record_shapes=True)`` leaves in a
trace, read into columns. Pure polars over the ranges frame: no SQLite, no torch.

Under ``emit_nvtx`` every aten op (and every autograd node of the backward pass) pushes one NVTX
range in the default domain, named by ``torch/csrc/profiler/util.cpp`` (``getNvtxStr``)::

    aten::mm, seq = 3021, op_id = 86, sizes = [[4096, 1024], [1024, 1024]], input_op_ids = [(84,0), (80,0)]
    MmBackward0, seq = 3021, op_id = 912, sizes = [[4096, 1024]], input_op_ids = [(911,0)]

``seq`` is the autograd sequence number (absent for ops autograd does not record), ``op_id`` a
handle unique in the run, ``sizes`` one shape per argument (``[]`` for an argument that is not a
tensor; tensor lists are flattened in place) and ``input_op_ids`` the ``(op_id, output)`` that made
each tensor argument (``(0,-1)`` when unknown). Without ``record_shapes=True`` the last two are
absent. Names are nearly all distinct (``op_id``), so a trace of a few training steps holds
millions of them: everything here is a string expression over the whole column, never a Python
loop per range, and the slow parts (sizes, producers) run only on the rows that need them.
"""

from __future__ import annotations

import polars as pl

OP_DOMAIN = ""  # emit_nvtx pushes its ranges with nvtxRangePushA: the default domain
# An op range: an op name without commas, then one of the fields getNvtxStr writes after it.
OP_RANGE_PATTERN = r"^[^,]+, (?:seq|stashed seq|op_id|sizes) = "
SIZES_MARK = ", sizes = "
INPUTS_MARK = ", input_op_ids = "
_DIMS = r"(?:\d{1,18}(?:, \d{1,18})*)?"  # at most 18 digits: every size fits an Int64
SIZES_PATTERN = rf"^\[(?:\[{_DIMS}\](?:, \[{_DIMS}\])*)?\]$"
SHAPES_TYPE = pl.List(pl.List(pl.Int64))


def is_op_range() -> pl.Expr:
    """True for a range that emit_nvtx pushed for an aten op or an autograd node (columns ``domain``, ``name``)."""
    return (pl.col("domain") == OP_DOMAIN) & pl.col("name").str.contains(OP_RANGE_PATTERN)


def op_name() -> pl.Expr:
    """The op of an op range's ``name``: ``aten::mm``, ``MmBackward0``."""
    return pl.col("name").str.extract(r"^([^,]*)", 1)


def sizes_text() -> pl.Expr:
    """The ``sizes = [...]`` field of an op range's ``name`` as written (null when the name has none).

    Taken up to ``, input_op_ids = `` or the end of the name, so a name cut short keeps its cut
    sizes: :func:`decode_sizes` rejects them.
    """
    after = pl.col("name").str.split(SIZES_MARK).list.get(1, null_on_oob=True)
    return after.str.split(INPUTS_MARK).list.first()


def decode_sizes(text: pl.Expr) -> pl.Expr:
    """``[[4096, 1024], [], [7]]`` as a list of shapes (``List(List(Int64))``); null when ``text`` is
    null or not such a list (cut short, hostile, a number too large)."""
    return pl.when(text.str.contains(SIZES_PATTERN)).then(text).otherwise(None).str.json_decode(SHAPES_TYPE)


def op_id() -> pl.Expr:
    """The ``op_id`` of an op range's ``name`` (null when absent)."""
    return pl.col("name").str.extract(r", op_id = (\d{1,18})(?:,|$)", 1).cast(pl.Int64)


def input_producers(ops: pl.DataFrame) -> pl.DataFrame:
    """For every tensor argument of the op ranges in ``ops`` (columns ``rid``, ``name``): which op made it.

    Returns
    -------
    polars.DataFrame
        ``rid`` (the consuming op range), ``position`` (the argument's index, as in ``sizes``),
        ``producer`` (the ``op_id`` of the op that returned the tensor), ``output`` (its output
        index). Arguments whose maker is unknown (``(0,-1)``) are left out.
    """
    pairs = (
        ops.select(
            "rid",
            pl.col("name")
            .str.split(INPUTS_MARK)
            .list.get(1, null_on_oob=True)
            .str.extract_all(r"\(\d{1,18},-?\d{1,9}\)"),
        )
        .with_columns(position=pl.int_ranges(pl.col("name").list.len()))
        .explode("name", "position")
        .drop_nulls("name")
    )
    pair = pl.col("name").str.strip_chars("()").str.split_exact(",", 1)
    return pairs.select(
        "rid",
        pl.col("position").cast(pl.Int64),
        pair.struct.field("field_0").cast(pl.Int64).alias("producer"),
        pair.struct.field("field_1").cast(pl.Int64).alias("output"),
    ).filter(pl.col("producer") > 0)
