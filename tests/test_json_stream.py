"""JSON documents with row tables are written as a stream (``report.render.json_stream``) and parse
to exactly the documents of plain rows that ``json.dumps`` used to write."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from stagemfu import postprocess
from stagemfu.cli import cli, json_text
from stagemfu.report.render import json_stream
from stagemfu.report.render.json_stream import json_chunks
from stagemfu.report.render.postprocess_data import postprocess_document
from stagemfu.report.render.postprocess_many import many_document


def streamed(document: Any) -> bytes:
    return b"".join(json_chunks(document))


def plain(document: Any) -> Any:
    """The document as it was built before: every frame as ``to_dicts()``, written by ``json.dumps``."""

    def rows(value: Any) -> Any:
        if isinstance(value, pl.DataFrame):
            return value.to_dicts()
        if isinstance(value, dict):
            return {k: rows(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [rows(v) for v in value]
        return value

    return json.loads(json_text(rows(document)))


@pytest.mark.parametrize("name", ["tiny_vlm", "named_domain", "cuda_graph_node", "llama_train"])
def test_postprocess_json_parses_to_the_document_of_plain_rows(loaded, name):
    for instances in (False, True):
        document = postprocess_document(loaded[name], top=5, instances=instances)
        assert json.loads(streamed(document)) == plain(document)


def test_the_several_traces_document_parses_to_the_document_of_plain_rows(trace_paths):
    ct = postprocess.load_many([trace_paths["tiny_vlm"], trace_paths["named_domain"]], jobs=1)
    document = many_document(ct, top=3)
    assert json.loads(streamed(document)) == plain(document)


def test_a_document_without_frames_is_written_as_json_text_writes_it():
    document = {
        "schema": "x/1",
        "empty": {},
        "none": [],
        "nested": {"a": [1, 2.5, None, True, {"b": 'é\n"q"\x1b'}], "c": 1e-7},
        "pairs": [[1, 2], [3]],
    }
    assert streamed(document).decode("utf-8") == json_text(document)


def test_frames_and_their_neighbours_keep_json_dumps_layout():
    frame = pl.DataFrame({"name": ["a", "b"], "ns": [1, 2]})
    document = {"schema": "x/1", "rows": frame, "empty": frame.clear(), "meta": {"k": [1]}}
    assert streamed(document).decode() == (
        '{\n  "schema": "x/1",\n  "rows": [\n    {"name":"a","ns":1},\n    {"name":"b","ns":2}\n  ],\n'
        '  "empty": [],\n  "meta": {\n    "k": [\n      1\n    ]\n  }\n}\n'
    )


TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", '"', "\\", "\n\r\t\b\f", "\x00\x1f\x7f", "\u2028\u2029", "</script>", "=cmd|' /C calc'!A0", "a/b"]
)


@settings(deadline=None, max_examples=60)
@given(
    rows=st.lists(
        st.tuples(
            st.none() | TEXT,
            st.none() | st.integers(-(2**63), 2**63 - 1),
            st.none() | st.floats(allow_nan=True, allow_infinity=True),
            st.none() | st.lists(st.integers(-5, 5), max_size=3),
            st.booleans(),
        ),
        max_size=30,
    ),
    batch=st.integers(1, 7),
)
def test_any_rows_parse_back_exactly_whatever_the_batches(rows, batch):
    frame = pl.DataFrame(
        rows,
        schema={"s": pl.Utf8, "i": pl.Int64, "f": pl.Float64, "l": pl.List(pl.Int64), "b": pl.Boolean},
        orient="row",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(json_stream, "BATCH_ROWS", batch)
        parsed = json.loads(streamed({"t": frame, "after": [frame, 1]}))
    expected = [
        {**row, "f": None if row["f"] is not None and not math.isfinite(row["f"]) else row["f"]}
        for row in frame.to_dicts()
    ]
    assert parsed == {"t": expected, "after": [expected, 1]}


def test_writing_holds_a_few_batches_of_rows_not_the_document(monkeypatch):
    """Python's heap while a table of 100,000 distinct long names is written stays near a batch's
    text (a few copies of it), far below the document; the rows as dicts (as before) held more than
    the whole document."""
    monkeypatch.setattr(json_stream, "BATCH_ROWS", 2_000)
    n = 100_000
    names = [f"aten::mm, seq = {i}, op_id = {i}, sizes = [[{i}, 4096], [4096, 4096]]" for i in range(n)]
    frame = pl.DataFrame({"name": names, "busy_ns": range(n), "idle_share": [0.5] * n})
    tracemalloc.start()
    try:
        written = sum(len(chunk) for chunk in json_chunks({"ranges": frame}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written > 10 * 2**20
    assert peak < written // 4


def test_the_command_writes_the_same_document_to_a_file_and_to_standard_output(trace_paths, tmp_path):
    target = tmp_path / "times.json"
    args = ["postprocess", str(trace_paths["tiny_vlm"]), "--format", "json", "--instances"]
    to_file = CliRunner().invoke(cli, [*args, "-o", str(target)], catch_exceptions=False)
    to_stdout = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert to_file.exit_code == 0 and to_stdout.exit_code == 0
    assert target.read_text(encoding="utf-8") == to_stdout.stdout
    st_ = postprocess.load(trace_paths["tiny_vlm"])
    assert json.loads(to_stdout.stdout)["instances"] == st_.instances.to_dicts()
