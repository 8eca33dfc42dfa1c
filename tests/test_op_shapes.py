"""Reading emit_nvtx op range names into columns: recognition, op, sizes, producers; malformed and
hostile names are data (null sizes), never an error."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from stagemfu.postprocess.op_shapes import decode_sizes, input_producers, is_op_range, op_id, op_name, sizes_text

MM = "aten::mm, seq = 3021, op_id = 86, sizes = [[4096, 1024], [1024, 1024]], input_op_ids = [(84,0), (80,0)]"


def parse(names: list[str], domain: str = "") -> pl.DataFrame:
    frame = pl.DataFrame({"rid": range(len(names)), "domain": [domain] * len(names), "name": names})
    return frame.with_columns(
        is_op=is_op_range(), op=op_name(), text=sizes_text(), sizes=decode_sizes(sizes_text()), op_id=op_id()
    )


def test_an_emit_nvtx_name_reads_into_op_sizes_and_id():
    row = parse([MM]).row(0, named=True)
    assert row["is_op"] and row["op"] == "aten::mm" and row["op_id"] == 86
    assert row["sizes"] == [[4096, 1024], [1024, 1024]]


def test_autograd_nodes_and_ops_without_shapes_are_op_ranges():
    rows = parse(
        [
            "MmBackward0, seq = 3021, op_id = 912, sizes = [[4096, 1024]], input_op_ids = [(911,0)]",
            "aten::addmm, seq = 1, op_id = 5",  # recorded without record_shapes
            "aten::empty, op_id = 7, sizes = [[], [], [], [], [], []]",
        ]
    )
    assert rows["is_op"].to_list() == [True, True, True]
    assert rows["op"].to_list() == ["MmBackward0", "aten::addmm", "aten::empty"]
    assert rows["text"][1] is None and rows["sizes"][1] is None
    assert rows["sizes"][2].to_list() == [[]] * 6


def test_stage_ranges_and_other_domains_are_not_op_ranges():
    assert parse(["forward", "step 3, loss = 2", "prefill"])["is_op"].to_list() == [False, False, False]
    assert parse([MM], domain="stagemfu")["is_op"].to_list() == [False]


def test_cut_short_malformed_and_hostile_sizes_are_null():
    names = [
        "aten::mm, op_id = 1, sizes = [[4096, 10",
        "aten::mm, op_id = 2, sizes = [[1e9], [2]]",
        "aten::mm, op_id = 3, sizes = [[4, 4]; DROP TABLE], input_op_ids = []",
        "aten::mm, op_id = 4, sizes = [[1234567890123456789012], [1]]",  # does not fit an Int64
        "<b>aten::mm</b>, op_id = 5, sizes = [[-1, 4], [4, 4]]",
        "aten::mm, op_id = 6, sizes = [[2, 3]] trailing",
    ]
    rows = parse(names)
    assert rows["is_op"].all()
    assert rows["sizes"].null_count() == len(names)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10**12), max_size=5), max_size=8))
def test_any_sizes_list_round_trips(shapes):
    text = "[" + ", ".join("[" + ", ".join(map(str, s)) + "]" for s in shapes) + "]"
    assert (
        parse([f"aten::cat, seq = 1, op_id = 2, sizes = {text}, input_op_ids = [(0,-1)]"])["sizes"][0].to_list()
        == shapes
    )


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_name_parses_without_error(name):
    rows = parse([name, MM + name])
    assert rows.height == 2


def test_producers_name_the_op_that_made_each_argument():
    ops = pl.DataFrame(
        {"rid": [0, 1], "name": [MM, "aten::relu, op_id = 90, sizes = [[4, 4]], input_op_ids = [(0,-1)]"]}
    )
    producers = input_producers(ops)
    assert producers.rows() == [(0, 0, 84, 0), (0, 1, 80, 0)]  # (0,-1): no known maker, left out
