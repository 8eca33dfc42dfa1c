"""Edge cases of reading and attributing, on small synthetic exports (see ``make_trace``).

The rule under test (ARCHITECTURE.md): an op belongs to range R when the CUDA call that launched
it lies inside R on R's own thread; op and call are matched by correlation id within one process.
"""

from __future__ import annotations

import hashlib
import lzma
import shutil

import polars as pl
import pytest
from conftest import FIXTURES, NVTX_DOMAIN_CREATE, NVTX_MARK, NVTX_STARTEND, gpid, gtid, launch

from stagemfu import postprocess
from stagemfu.errors import CategoryTableError, StagemfuError, TraceError


def trace_of(make_trace, tmp_path, launches=(), **kwargs):
    """make_trace with ``launches`` given as (call, kernel) pairs from :func:`launch`."""
    calls = [c for c, _ in launches] + list(kwargs.pop("calls", []))
    kernels = [k for _, k in launches] + list(kwargs.pop("kernels", []))
    return make_trace(tmp_path, calls=calls, kernels=kernels, **kwargs)


def instance(st, name):
    rows = st.instances.filter(pl.col("name") == name)
    assert rows.height == 1, rows
    return rows.row(0, named=True)


# --------------------------------------------------------------------------------------------
# Attribution rule


def test_kernel_launched_on_another_thread_is_not_attributed(make_trace, tmp_path):
    path = trace_of(
        make_trace,
        tmp_path,
        [launch(1, (10, 12), (100, 110), tid=2), launch(2, (20, 22), (120, 125), tid=1)],
        ranges=[{"start": 0, "end": 50, "text": "stage", "tid": 1}],
    )
    st = postprocess.load(path)
    stage = instance(st, "stage")
    assert (stage["gpu_ops"], stage["kernel_ns"], stage["span_ns"]) == (1, 5, 5)
    assert st.unattributed.row(0, named=True)["kernels"] == 1
    assert st.unattributed.row(0, named=True)["kernel_ns"] == 10


def test_op_is_matched_to_its_call_within_the_same_process_only(make_trace, tmp_path):
    # Both processes use correlation id 7. Process 1 launches inside its range; process 2 outside.
    path = trace_of(
        make_trace,
        tmp_path,
        [launch(7, (10, 12), (100, 110), pid=1, tid=1), launch(7, (60, 62), (200, 230), pid=2, tid=2)],
        ranges=[{"start": 0, "end": 50, "text": "stage", "pid": 1, "tid": 1}],
    )
    st = postprocess.load(path)
    stage = instance(st, "stage")
    assert (stage["gpu_ops"], stage["kernel_ns"], stage["span_ns"]) == (1, 10, 10)
    assert st.unattributed.row(0, named=True)["kernel_ns"] == 30
    assert st.totals.row(0, named=True)["gpu_ops"] == 2  # (process, correlation id) pairs


def test_op_of_another_process_with_a_matching_correlation_id_is_not_attributed(make_trace, tmp_path):
    call, _ = launch(7, (10, 12), (0, 0), pid=1, tid=1)
    _, kernel = launch(7, (0, 0), (100, 110), pid=2)
    st = postprocess.load(
        make_trace(
            tmp_path,
            calls=[call],
            kernels=[kernel],
            ranges=[{"start": 0, "end": 50, "text": "stage", "pid": 1, "tid": 1}],
        )
    )
    assert instance(st, "stage")["gpu_ops"] == 0
    assert st.unattributed.row(0, named=True)["kernels"] == 1
    assert any("no matching CUDA API call" in n for n in st.notes)


def test_call_must_lie_entirely_inside_the_range(make_trace, tmp_path):
    path = trace_of(
        make_trace,
        tmp_path,
        [
            launch(1, (10, 20), (100, 101)),  # exactly the range: inside (ends included)
            launch(2, (9, 15), (102, 103)),  # starts before the range
            launch(3, (15, 21), (104, 105)),  # ends after the range
        ],
        ranges=[{"start": 10, "end": 20, "text": "stage"}],
    )
    st = postprocess.load(path)
    assert instance(st, "stage")["gpu_ops"] == 1
    assert st.unattributed.row(0, named=True)["gpu_ops"] == 2


def test_op_counts_in_every_enclosing_range_and_exclusively_in_the_innermost(make_trace, tmp_path):
    path = trace_of(
        make_trace,
        tmp_path,
        [launch(1, (3, 4), (100, 110)), launch(2, (12, 13), (120, 125))],
        ranges=[{"start": 0, "end": 20, "text": "outer"}, {"start": 2, "end": 5, "text": "inner"}],
    )
    st = postprocess.load(path)
    outer, inner = instance(st, "outer"), instance(st, "inner")
    assert (outer["gpu_ops"], outer["busy_ns"], outer["span_ns"], outer["exclusive_busy_ns"]) == (2, 15, 25, 5)
    assert (inner["gpu_ops"], inner["busy_ns"], inner["exclusive_busy_ns"]) == (1, 10, 10)
    assert inner["path"] == "outer/inner" and inner["depth"] == 1
    assert outer["idle_share"] == pytest.approx(1 - 15 / 25)


def test_kernels_sharing_a_correlation_id_count_as_one_op(make_trace, tmp_path):
    call, k1 = launch(1, (3, 4), (100, 110))
    k2 = {**k1, "start": 110, "end": 130}
    st = postprocess.load(
        make_trace(tmp_path, calls=[call], kernels=[k1, k2], ranges=[{"start": 0, "end": 20, "text": "graph"}])
    )
    g = instance(st, "graph")
    assert (g["gpu_ops"], g["kernels"], g["kernel_ns"], g["busy_ns"], g["span_ns"]) == (1, 2, 30, 30, 30)


def test_memcpy_and_memset_are_ops_but_not_kernel_time(make_trace, tmp_path):
    calls = [{"start": s, "end": s + 1, "correlationId": c} for c, s in [(1, 2), (2, 4), (3, 6)]]
    path = make_trace(
        tmp_path,
        calls=calls,
        ranges=[{"start": 0, "end": 10, "text": "s"}],
        kernels=[{"start": 100, "end": 110, "correlationId": 1}],
        memcpys=[{"start": 105, "end": 120, "correlationId": 2, "copyKind": 1}],
        memsets=[{"start": 130, "end": 131, "correlationId": 3}],
    )
    st = postprocess.load(path)
    s = instance(st, "s")
    assert (s["gpu_ops"], s["kernels"], s["kernel_ns"], s["busy_ns"], s["span_ns"]) == (3, 1, 10, 21, 31)
    kinds = dict(st.kernels.select("kernel", "kind").iter_rows())
    assert kinds["[CUDA memcpy Host-to-Device]"] == "memcpy"
    assert kinds["[CUDA memset]"] == "memset"
    categories = dict(st.kernels.select("kernel", "category").iter_rows())
    assert categories["[CUDA memset]"] == "copy"


def test_graph_level_replays_are_ops_of_kind_graph(make_trace, tmp_path):
    path = make_trace(
        tmp_path,
        calls=[{"start": 2, "end": 3, "correlationId": 1}],
        ranges=[{"start": 0, "end": 10, "text": "replay"}],
        graphs=[{"start": 100, "end": 140, "correlationId": 1, "graphId": 9}],
    )
    st = postprocess.load(path)
    r = instance(st, "replay")
    assert (r["gpu_ops"], r["span_ns"], r["busy_ns"]) == (1, 40, 40)
    assert st.kernels["kind"].to_list() == ["graph"]


def test_range_touching_two_devices_reports_both(make_trace, tmp_path):
    path = trace_of(
        make_trace,
        tmp_path,
        [launch(1, (2, 3), (100, 110), device=0), launch(2, (4, 5), (100, 130), device=1)],
        ranges=[{"start": 0, "end": 10, "text": "s"}],
    )
    devices = postprocess.load(path).devices.filter(pl.col("name") == "s").sort("device")
    assert devices.select("device", "busy_ns", "gpu_ops").rows() == [(0, 10, 1), (1, 30, 1)]


# --------------------------------------------------------------------------------------------
# NVTX event kinds, domains and names


def test_unclosed_range_is_left_out_with_a_note(make_trace, tmp_path):
    path = trace_of(
        make_trace,
        tmp_path,
        [launch(1, (2, 3), (100, 110))],
        ranges=[{"start": 0, "end": None, "text": "open"}, {"start": 1, "end": 5, "text": "closed"}],
    )
    st = postprocess.load(path)
    assert st.instances["name"].to_list() == ["closed"]
    assert any("never ended" in n for n in st.notes)


def test_start_end_range_ended_on_another_thread_gets_wall_time_only(make_trace, tmp_path):
    path = trace_of(
        make_trace,
        tmp_path,
        [launch(1, (2, 3), (100, 110), tid=1)],
        ranges=[
            {"start": 0, "end": 10, "text": "cross", "eventType": NVTX_STARTEND, "tid": 1, "endGlobalTid": gtid(tid=2)},
            {"start": 0, "end": 10, "text": "same", "eventType": NVTX_STARTEND, "tid": 1, "endGlobalTid": gtid(tid=1)},
            {"start": 0, "end": 10, "text": "plain", "eventType": NVTX_STARTEND, "tid": 1},
        ],
    )
    st = postprocess.load(path)
    cross = instance(st, "cross")
    assert cross["wall_ns"] == 10 and cross["style"] == "StartEnd"
    assert (cross["gpu_ops"], cross["span_ns"], cross["busy_ns"], cross["kernel_ns"]) == (0, 0, 0, 0)
    assert instance(st, "same")["gpu_ops"] == 1
    assert instance(st, "plain")["gpu_ops"] == 1
    assert sum("another thread" in n for n in st.notes) == 1


def test_marks_are_ignored(make_trace, tmp_path):
    path = trace_of(
        make_trace,
        tmp_path,
        [launch(1, (2, 3), (100, 110))],
        ranges=[
            {"start": 5, "end": None, "text": "a mark", "eventType": NVTX_MARK},
            {"start": 0, "end": 10, "text": "stage"},
        ],
    )
    st = postprocess.load(path)
    assert st.instances["name"].to_list() == ["stage"]
    assert not any("never ended" in n for n in st.notes)


def test_domain_is_named_by_its_creation_row_with_text_id(make_trace, tmp_path):
    path = make_trace(
        tmp_path,
        strings={50: "my.domain", 51: "prefill"},
        ranges=[
            {"start": 0, "end": None, "eventType": NVTX_DOMAIN_CREATE, "textId": 50, "domainId": 3},
            {"start": 1, "end": 9, "textId": 51, "domainId": 3},
            {"start": 10, "end": 19, "text": "prefill", "domainId": 0},
        ],
    )
    st = postprocess.load(path)
    assert sorted(st.ranges.select("domain", "name").rows()) == [("", "prefill"), ("my.domain", "prefill")]
    assert postprocess.load(path, ranges=("my.domain:prefill",)).instances["start_ns"].to_list() == [1]
    assert postprocess.load(path, ranges=(":prefill",)).instances["start_ns"].to_list() == [10]


def test_domain_is_named_within_its_own_process(make_trace, tmp_path):
    path = make_trace(
        tmp_path,
        ranges=[
            {"start": 0, "end": None, "eventType": NVTX_DOMAIN_CREATE, "text": "first", "domainId": 1, "pid": 1},
            {"start": 0, "end": None, "eventType": NVTX_DOMAIN_CREATE, "text": "second", "domainId": 1, "pid": 2},
            {"start": 1, "end": 9, "text": "r", "domainId": 1, "pid": 1},
            {"start": 1, "end": 9, "text": "r", "domainId": 1, "pid": 2},
        ],
    )
    st = postprocess.load(path)
    assert sorted(st.instances.select("pid", "domain").rows()) == [(1, "first"), (2, "second")]


def test_range_text_comes_from_string_ids(make_trace, tmp_path):
    path = make_trace(tmp_path, strings={7: "vision"}, ranges=[{"start": 0, "end": 9, "textId": 7}])
    assert postprocess.load(path).instances["name"].to_list() == ["vision"]


def test_names_are_kept_byte_exact(make_trace, tmp_path):
    hostile = "<b>|pipe|</b> \"q\" 'q', comma\nnewline\ttab — ünïcødé 🚀" + "y" * 100_000
    st = postprocess.load(make_trace(tmp_path, ranges=[{"start": 0, "end": 9, "text": hostile}]))
    assert st.instances["name"].to_list() == [hostile]


def test_op_with_no_runtime_call_counts_unattributed(make_trace, tmp_path):
    path = make_trace(
        tmp_path,
        ranges=[{"start": 0, "end": 100, "text": "stage"}],
        kernels=[{"start": 10, "end": 30, "correlationId": 99}],
    )
    st = postprocess.load(path)
    assert instance(st, "stage")["gpu_ops"] == 0
    un = st.unattributed.row(0, named=True)
    assert (un["gpu_ops"], un["kernels"], un["kernel_ns"], un["busy_ns"]) == (1, 1, 20, 20)
    assert any("no matching CUDA API call" in n for n in st.notes)


def test_trace_with_only_memcpy_activity_is_read(make_trace, tmp_path):
    path = make_trace(
        tmp_path,
        omit=["CUPTI_ACTIVITY_KIND_KERNEL"],
        ranges=[{"start": 0, "end": 9, "text": "s"}],
        calls=[{"start": 1, "end": 2, "correlationId": 1}],
        memcpys=[{"start": 10, "end": 14, "correlationId": 1, "copyKind": 2}],
    )
    s = instance(postprocess.load(path), "s")
    assert (s["gpu_ops"], s["busy_ns"], s["kernels"]) == (1, 4, 0)


def test_trace_without_gpus_table_says_so(make_trace, tmp_path):
    st = postprocess.load(make_trace(tmp_path, ranges=[{"start": 0, "end": 9, "text": "s"}]))
    assert st.trace.gpus.is_empty()
    assert any("TARGET_INFO_GPU" in n for n in st.notes)


def test_gpus_table_is_read(make_trace, tmp_path):
    gpus = [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "smCount": 132, "clockRate": 1980000000}]
    st = postprocess.load(make_trace(tmp_path, gpus=gpus, ranges=[{"start": 0, "end": 9, "text": "s"}]))
    assert st.trace.gpus.to_dicts() == [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "sms": 132, "clock_hz": 1980000000}]


# --------------------------------------------------------------------------------------------
# Files that are not usable traces


def assert_trace_error(path, *words):
    with pytest.raises(TraceError) as err:
        postprocess.load(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    "table, word",
    [
        ("NVTX_EVENTS", "NVTX_EVENTS"),
        ("StringIds", "StringIds"),
        ("CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_RUNTIME"),
        ("CUPTI_ACTIVITY_KIND_KERNEL", "no GPU activity"),
    ],
)
def test_missing_table_raises_trace_error_naming_it(make_trace, tmp_path, table, word):
    path = make_trace(tmp_path, omit=[table], ranges=[{"start": 0, "end": 9, "text": "s"}])
    message = assert_trace_error(path, word)
    assert "nsys" in message  # says what to do


def test_empty_file_raises_trace_error(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    assert_trace_error(path, "empty")


def test_text_file_raises_trace_error(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("this is not a database\n")
    assert_trace_error(path, "not an SQLite file")


def test_truncated_sqlite_raises_trace_error(tmp_path):
    with lzma.open(FIXTURES / "tiny_vlm.sqlite.xz", "rb") as fh:
        head = fh.read(4096)
    path = tmp_path / "truncated.sqlite"
    path.write_bytes(head)
    assert_trace_error(path)


def test_directory_raises_trace_error(tmp_path):
    assert_trace_error(tmp_path, "directory")


def test_missing_file_raises_trace_error(tmp_path):
    assert_trace_error(tmp_path / "nope.sqlite", "no such file")


def test_reading_never_changes_the_file_nor_writes_next_to_it(trace_paths, tmp_path):
    path = tmp_path / "ro" / "tiny_vlm.sqlite"
    path.parent.mkdir()
    shutil.copy(trace_paths["tiny_vlm"], path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        postprocess.load(path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["tiny_vlm.sqlite"]
    finally:
        path.parent.chmod(0o755)


def test_compressed_file_that_is_not_an_export_is_reported_under_its_own_name(tmp_path):
    import gzip

    path = tmp_path / "profile.pt.trace.json.gz"
    path.write_bytes(gzip.compress(b'{"traceEvents": []}'))
    with pytest.raises(StagemfuError) as err:
        postprocess.load(path)
    assert str(err.value).startswith(f"{path}: "), str(err.value)


def test_corrupt_compressed_file_raises_naming_it(tmp_path):
    path = tmp_path / "trace.sqlite.xz"
    path.write_bytes(b"not xz at all")
    with pytest.raises(StagemfuError) as err:
        postprocess.load(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_compressed_export_is_read_like_the_plain_one(trace_paths, loaded):
    compressed = postprocess.load(FIXTURES / "named_domain.sqlite.xz")
    assert compressed.ranges.equals(loaded["named_domain"].ranges)


# --------------------------------------------------------------------------------------------
# --within and --range


def nested_trace(make_trace, tmp_path):
    launches = [launch(1, (2, 3), (100, 110)), launch(2, (12, 13), (200, 205)), launch(3, (22, 23), (300, 301))]
    ranges = [
        {"start": 0, "end": 10, "text": "warmup"},
        {"start": 1, "end": 5, "text": "prefill"},
        {"start": 11, "end": 20, "text": "measured"},
        {"start": 11, "end": 15, "text": "prefill"},
        {"start": 21, "end": 25, "text": "prefill"},
    ]
    return trace_of(make_trace, tmp_path, launches, ranges=ranges)


def test_within_keeps_the_named_ranges_and_what_they_enclose(make_trace, tmp_path):
    st = postprocess.load(nested_trace(make_trace, tmp_path), within="measured")
    assert sorted(st.instances.select("name", "start_ns").rows()) == [("measured", 11), ("prefill", 11)]
    prefill = st.ranges.filter(pl.col("name") == "prefill").row(0, named=True)
    assert (prefill["instances"], prefill["kernel_ns"]) == (1, 5)
    assert st.within == "measured"


def test_within_unknown_name_raises_naming_known_ranges(make_trace, tmp_path):
    with pytest.raises(StagemfuError) as err:
        postprocess.load(nested_trace(make_trace, tmp_path), within="measure")
    assert "measure" in str(err.value) and "'warmup'" in str(err.value)
    assert "\n" not in str(err.value)


def test_range_filter_keeps_only_those_names(make_trace, tmp_path):
    st = postprocess.load(nested_trace(make_trace, tmp_path), ranges=("prefill",))
    assert st.ranges["name"].to_list() == ["prefill"]
    assert st.ranges["instances"].item() == 3


def test_range_filter_unknown_name_raises(make_trace, tmp_path):
    with pytest.raises(StagemfuError, match="decode"):
        postprocess.load(nested_trace(make_trace, tmp_path), ranges=("decode",))


# --------------------------------------------------------------------------------------------
# Kernel categories


def category_trace(make_trace, tmp_path):
    return trace_of(
        make_trace,
        tmp_path,
        [
            launch(1, (2, 3), (100, 110), name="my_special_op_kernel"),
            launch(2, (4, 5), (110, 120), name="ampere_sgemm_128x64_nn"),
        ],
        ranges=[{"start": 0, "end": 10, "text": "s"}],
    )


def test_builtin_categories_apply(make_trace, tmp_path):
    st = postprocess.load(category_trace(make_trace, tmp_path))
    assert dict(st.kernels.select("kernel", "category").iter_rows()) == {
        "my_special_op_kernel": "other",
        "ampere_sgemm_128x64_nn": "gemm",
    }


def test_user_category_file_extends_and_comes_first(make_trace, tmp_path):
    rules = tmp_path / "cats.csv"
    rules.write_text("category,pattern\nspecial,my_special_op\nmine,sgemm\n")
    st = postprocess.load(category_trace(make_trace, tmp_path), categories=rules)
    assert dict(st.kernels.select("kernel", "category").iter_rows()) == {
        "my_special_op_kernel": "special",
        "ampere_sgemm_128x64_nn": "mine",
    }
    assert sorted(st.categories["category"]) == ["mine", "special"]


@pytest.mark.parametrize(
    "text",
    [
        "name,regex\nx,y\n",  # wrong header
        "category,pattern\nspecial,\n",  # empty pattern
        "category,pattern\nbad,(unclosed\n",  # not a regular expression
        "",  # nothing at all
    ],
)
def test_malformed_category_file_raises(make_trace, tmp_path, text):
    rules = tmp_path / "cats.csv"
    rules.write_text(text)
    with pytest.raises(CategoryTableError) as err:
        postprocess.load(category_trace(make_trace, tmp_path), categories=rules)
    assert str(rules) in str(err.value) and "\n" not in str(err.value)


def test_missing_category_file_raises(make_trace, tmp_path):
    with pytest.raises(CategoryTableError):
        postprocess.load(category_trace(make_trace, tmp_path), categories=tmp_path / "nope.csv")


def test_helpers_pack_ids_like_nsys():
    assert gpid(3) == gtid(3, 0) == 3 << 24


def test_kernels_and_categories_of_equal_time_are_listed_by_name(make_trace, tmp_path):
    """Ties in total time are ordered by name, so two runs write the same tables."""
    trace = category_trace(make_trace, tmp_path)  # two kernels of 10 ns each: gemm and other
    for _ in range(20):
        st = postprocess.load(trace)
        assert st.kernels["kernel"].to_list() == ["ampere_sgemm_128x64_nn", "my_special_op_kernel"]
        assert st.categories["category"].to_list() == ["gemm", "other"]
