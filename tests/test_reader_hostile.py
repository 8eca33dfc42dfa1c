"""Damaged and drifted exports, one case each: a result with notes or one TraceError naming the file.

The fuzz suite (``test_fuzz_traces.py``) draws such damage at random; these are the cases an
adversarial pass met, written out so that each one reads as what it promises.
"""

from __future__ import annotations

import lzma
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES, launch

from stagemfu import postprocess
from stagemfu.errors import StagemfuError, TraceError
from stagemfu.report import report

NOT_UTF8 = "CAST(X'66ff6fc328' AS TEXT)"


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A copy of a real export (a small one), free to damage."""
    path = tmp_path / "named_domain.sqlite"
    path.write_bytes(lzma.decompress((FIXTURES / "named_domain.sqlite.xz").read_bytes()))
    return path


def change(path: Path, *statements: str) -> Path:
    db = sqlite3.connect(path)
    for sql in statements:
        db.execute(sql)
    db.commit()
    db.close()
    return path


def one_line_error(path: Path, **options: object) -> str:
    with pytest.raises(TraceError) as err:
        postprocess.load(path, **options)  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


@pytest.mark.parametrize(
    "table",
    [
        "StringIds",
        "NVTX_EVENTS",
        "TARGET_INFO_GPU",
        "META_DATA_EXPORT",
        "CUPTI_ACTIVITY_KIND_RUNTIME",
        "CUPTI_ACTIVITY_KIND_KERNEL",
        "ENUM_CUDA_MEMCPY_OPER",
    ],
)
@pytest.mark.parametrize("chunk_ops", [None, 100])
def test_a_damaged_root_page_is_one_trace_error(export, table, chunk_ops):
    db = sqlite3.connect(export)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(export.read_bytes())
    data[(root - 1) * page : root * page] = b"\xab" * page  # no valid page type
    export.write_bytes(bytes(data))
    assert "damaged" in one_line_error(export, chunk_ops=chunk_ops)


def test_a_name_that_is_not_utf8_is_read_with_replacement_characters(make_trace, tmp_path):
    call, kernel = launch(1, (10, 12), (100, 110))
    path = make_trace(tmp_path, ranges=[{"start": 0, "end": 50, "text": "stage"}], calls=[call], kernels=[kernel])
    change(path, f"UPDATE NVTX_EVENTS SET text = {NOT_UTF8}", f"UPDATE StringIds SET value = {NOT_UTF8}")
    st = postprocess.load(path)
    assert st.ranges["name"].to_list() == ["f\ufffdo\ufffd("]
    assert st.kernels["kernel"].to_list() == ["f\ufffdo\ufffd("]
    assert st.ranges["kernel_ns"].to_list() == [10]


def test_a_not_utf8_gpu_name_or_version_is_read_with_replacement_characters(export):
    change(
        export,
        f"UPDATE TARGET_INFO_GPU SET name = {NOT_UTF8}",
        f"UPDATE META_DATA_EXPORT SET value = {NOT_UTF8} WHERE name = 'EXPORT_PRODUCT_VERSION'",
    )
    trace = postprocess.read(export)
    assert trace.gpus["name"].to_list() == ["f\ufffdo\ufffd("]
    assert trace.tool_version == trace.details["nsys_version"] == "f\ufffdo\ufffd("


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("StringIds", "value"),
        ("StringIds", "id"),
        ("CUPTI_ACTIVITY_KIND_KERNEL", "end"),
        ("CUPTI_ACTIVITY_KIND_KERNEL", "correlationId"),
        ("CUPTI_ACTIVITY_KIND_RUNTIME", "start"),
        ("NVTX_EVENTS", "end"),
    ],
)
def test_a_missing_required_column_names_table_and_column(export, table, column):
    change(export, f'ALTER TABLE "{table}" RENAME COLUMN "{column}" TO "{column}_v2"')
    message = one_line_error(export)
    assert f"table {table} has no column {column!r}" in message


def test_renamed_metadata_columns_leave_the_versions_unknown(export):
    change(export, 'ALTER TABLE META_DATA_EXPORT RENAME COLUMN "value" TO "val"')
    trace = postprocess.read(export)
    assert (trace.details["nsys_version"], trace.details["schema_version"]) == ("unknown", "unknown")


def test_renamed_kernel_name_columns_leave_the_kernels_unnamed(export):
    change(
        export,
        *(
            f'ALTER TABLE CUPTI_ACTIVITY_KIND_KERNEL RENAME COLUMN "{c}" TO "{c}_v2"'
            for c in ("demangledName", "shortName", "mangledName")
        ),
    )
    st = postprocess.load(export)
    assert set(st.kernels["kernel"]) == {"[unnamed kernel]"}
    assert st.totals["kernels"].item() > 0


def test_a_memcpy_kind_table_without_labels_falls_back_to_the_cuda_names(make_trace, tmp_path):
    path = make_trace(
        tmp_path,
        calls=[{"start": 2, "end": 3, "correlationId": 1}],
        ranges=[{"start": 0, "end": 10, "text": "s"}],
        memcpys=[{"start": 100, "end": 110, "correlationId": 1, "copyKind": 2}],
    )
    change(path, "CREATE TABLE ENUM_CUDA_MEMCPY_OPER (id INTEGER, name TEXT)")
    assert postprocess.load(path).kernels["kernel"].to_list() == ["[CUDA memcpy Device-to-Host]"]


@pytest.mark.parametrize("chunk_ops", [None, 100])
@pytest.mark.parametrize(
    ("table", "column"),
    [("CUPTI_ACTIVITY_KIND_KERNEL", "start"), ("CUPTI_ACTIVITY_KIND_RUNTIME", "globalTid"), ("NVTX_EVENTS", "end")],
)
def test_text_in_an_integer_column_is_one_trace_error(export, table, column, chunk_ops):
    change(export, f'UPDATE "{table}" SET "{column}" = \'soon\' WHERE rowid % 5 = 0')
    message = one_line_error(export, chunk_ops=chunk_ops)
    assert "integer" in message and "damaged" in message


@pytest.mark.parametrize("chunk_ops", [None, 1])
def test_operations_ending_before_they_start_are_left_out_with_a_note(make_trace, tmp_path, chunk_ops):
    good_call, good = launch(1, (10, 12), (100, 110))
    bad_call, bad = launch(2, (20, 22), (200, 178))  # ends 22 ns before it starts
    path = make_trace(
        tmp_path,
        ranges=[{"start": 0, "end": 50, "text": "stage"}],
        calls=[good_call, bad_call],
        kernels=[good, bad],
    )
    st = postprocess.load(path, chunk_ops=chunk_ops)
    stage = st.ranges.row(0, named=True)
    assert (stage["kernel_ns"], stage["busy_ns"], stage["span_ns"], stage["gpu_ops"]) == (10, 10, 10, 1)
    assert st.totals["kernels"].item() == 1
    assert any(n.startswith("1 GPU operation(s) end before they start") for n in st.notes)
    if chunk_ops is None:
        assert st.ops["start"].to_list() == [100]


def test_ranges_ending_before_they_start_are_left_out_with_a_note(make_trace, tmp_path):
    path = make_trace(
        tmp_path,
        ranges=[{"start": 0, "end": 50, "text": "good"}, {"start": 60, "end": 59, "text": "backwards"}],
    )
    st = postprocess.load(path)
    assert st.ranges["name"].to_list() == ["good"]
    assert any(n.startswith("1 NVTX range(s) end before they start") for n in st.notes)


def test_impossible_times_are_left_out_rather_than_summed_into_negative_ones(make_trace, tmp_path):
    calls, kernels = zip(*[launch(i, (10 + i, 11 + i), (100, 110)) for i in range(1, 4)])
    path = make_trace(tmp_path, ranges=[{"start": 0, "end": 50, "text": "stage"}], calls=calls, kernels=kernels)
    change(path, 'UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET "end" = 9223372036854775807 WHERE correlationId > 1')
    stage = postprocess.load(path).ranges.row(0, named=True)
    assert (stage["kernel_ns"], stage["kernels"]) == (10, 1)


def test_a_within_range_that_never_closed_says_so(make_trace, tmp_path):
    path = make_trace(
        tmp_path, ranges=[{"start": 0, "end": None, "text": "measured"}, {"start": 1, "end": 5, "text": "prefill"}]
    )
    with pytest.raises(StagemfuError) as err:
        postprocess.load(path, within="measured")
    assert "the range 'measured' was never closed (the capture stopped inside it)" in str(err.value)
    assert "--within" not in str(err.value)  # the report picks 'measured' itself: no option to blame


def test_a_within_range_that_is_absent_is_named_without_an_option(make_trace, tmp_path):
    path = make_trace(tmp_path, ranges=[{"start": 1, "end": 5, "text": "prefill"}])
    with pytest.raises(StagemfuError, match=r"no NVTX range named 'measured' to keep the instances within; .*prefill"):
        postprocess.load(path, within="measured")


def test_the_report_default_within_of_an_unclosed_measured_range_is_explained(make_trace, tmp_path, analysis):
    path = make_trace(tmp_path, ranges=[{"start": 0, "end": None, "text": "measured"}])
    with pytest.raises(StagemfuError, match="was never closed") as err:
        report(path, flops_file=analysis)
    assert "--within" not in str(err.value)


def test_the_input_file_is_not_changed_by_a_read(export):
    before = export.read_bytes()
    postprocess.load(export, chunk_ops=100)
    assert export.read_bytes() == before


def test_instances_keep_their_columns_after_dropping_damage(make_trace, tmp_path):
    path = make_trace(tmp_path, ranges=[{"start": 0, "end": 5, "text": "a"}, {"start": 9, "end": 3, "text": "b"}])
    assert postprocess.load(path).instances.filter(pl.col("wall_ns") < 0).is_empty()
