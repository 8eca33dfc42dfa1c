"""Hostile input to the report and its options: one ``Error:`` line (exit 2) or a note, never a
traceback; every string from a trace escaped on every output (terminal, Markdown, HTML, CSV)."""

from __future__ import annotations

import io
import json
import math

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import launch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from report_traces import ANALYSIS, H100, generation_trace, write_json

from stagemfu.cli import cli
from stagemfu.errors import FlopsFileError, PeakError
from stagemfu.report.documents import Document
from stagemfu.report.flops_file import flops_from_document, read_flops_file
from stagemfu.report.peaks import resolve_peak

CLEAR_SCREEN = "\x1b[2J\x1b[H"
FORMULA = '=HYPERLINK("http://x.example/?a","click")'


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def one_line_error(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and result.stdout == "", result.output
    for word in words:
        assert word in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------
# Peaks


@pytest.mark.parametrize("value", ["nan", "1e-300", "inf", "-inf", "0", "-1", "1e9"])
def test_implausible_peak_tflops_is_one_line_error_on_the_flag_and_in_the_environment(toy, analysis, value):
    one_line_error(invoke("report", toy, "--flops", analysis, f"--peak-tflops={value}"), "--peak-tflops", "TFLOP/s")
    env = {"STAGEMFU_PEAK_TFLOPS": value}
    one_line_error(invoke("report", toy, "--flops", analysis, env=env), "STAGEMFU_PEAK_TFLOPS")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_implausible_peak_bandwidth_is_one_line_error(toy, analysis, value):
    one_line_error(invoke("report", toy, "--flops", analysis, f"--peak-bandwidth={value}"), "--peak-bandwidth", "GB/s")


def test_library_refuses_the_same_peaks():
    gpus = pl.DataFrame({"id": [0], "name": ["NVIDIA H100 80GB HBM3"], "sms": [132], "clock_hz": [1_980_000_000]})
    for bad in (math.nan, math.inf, 0.0, -1.0, 1e-300):
        with pytest.raises(PeakError, match="between"):
            resolve_peak(gpus, peak_tflops=bad)
        with pytest.raises(PeakError, match="GB/s"):
            resolve_peak(gpus, peak_bandwidth_gbs=bad)
    assert resolve_peak(gpus, peak_tflops=0.5).tflops == 0.5


# ------------------------------------------------------------------------------------------------
# postprocess options


@pytest.mark.parametrize("value", ["9" * 400, "1000000000001", "-1", "lots"])
def test_chunk_ops_out_of_range_is_one_line_error(toy, value):
    one_line_error(invoke("postprocess", toy, "--chunk-ops", value), "--chunk-ops")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe\x00\x01\x89PNG garbage", "not UTF-8 text"),
        (b"category,pattern\nx,(?<=a)b\n", "not a regular expression polars can run"),
        (b"category,pattern\nx,a{1000000}\n", "not a regular expression polars can run"),
    ],
)
def test_unusable_categories_file_is_one_line_error(toy, tmp_path, content, words):
    path = tmp_path / "categories.csv"
    path.write_bytes(content)
    one_line_error(invoke("postprocess", toy, "--categories", path), str(path), words)


@pytest.mark.parametrize(
    "address",
    ["not a url", "tcp://host", "http://x/y:1", "tcp://a\nb:1", "tcp://h:65536", f"tcp://{'a' * 64}.b:1", "x" * 5000],
)
def test_scheduler_that_is_not_an_address_is_one_line_error(toy, address):
    one_line_error(invoke("postprocess", toy, toy, "--scheduler", address), "--scheduler", "tcp://host:8786")


# ------------------------------------------------------------------------------------------------
# compare: report JSONs


@pytest.fixture
def saved_report(toy, analysis, tmp_path):
    path = tmp_path / "a.json"
    assert invoke("report", toy, "--flops", analysis, "--format", "json", "-o", path).exit_code == 0
    return path


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.pop("stages"), "has no 'stages'"),
        (lambda d: d["stages"][0].update(wall_ns="12"), 'stages[0].wall_ns: must be a non-negative integer, got "12"'),
        (lambda d: d["stages"][1].update(mfu_kernel="high"), "stages[1].mfu_kernel: must be a finite number"),
        (lambda d: d.update(stages={"a": 1}), "stages: must be a list"),
        (lambda d: d["kernels"][0].update(total_ns=None), "kernels[0].total_ns: must be a non-negative integer"),
    ],
)
def test_compare_refuses_a_report_json_that_does_not_fit_its_schema(saved_report, tmp_path, change, words):
    doc = json.loads(saved_report.read_text())
    change(doc)
    bad = write_json(tmp_path / "bad.json", doc)
    one_line_error(invoke("compare", saved_report, bad), str(bad), words)


def test_compare_refuses_a_report_json_that_is_not_utf8(saved_report, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(saved_report.read_bytes().replace(b'"stage": "prefill"', b'"stage": "\xff"'))
    one_line_error(invoke("compare", saved_report, bad), str(bad), "not UTF-8")


# ------------------------------------------------------------------------------------------------
# Files beside the trace


@pytest.mark.parametrize(
    "content",
    [b'{"model": 5}', b'{"inputs": {"new_tokens": "eight"}}', b"\xff\xfe", b"[1]", b'{"command": "python x.py"}'],
)
def test_broken_file_beside_the_trace_is_a_note_when_the_flops_come_from_elsewhere(toy, analysis, content):
    (toy.parent / "shapes.json").write_bytes(content)
    result = invoke("report", toy, "--flops", analysis, "--format", "json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert any(n.startswith(f"ignored {toy.parent / 'shapes.json'}") and "fix or remove it" in n for n in notes)


def test_broken_file_beside_the_trace_is_named_when_the_flops_had_to_come_from_it(toy):
    (toy.parent / "run.json").write_text('{"model": "deepseek-ocr2", "inputs": {"batch": 0}}')
    one_line_error(invoke("report", toy), "no FLOPs", "run.json", "inputs.batch: must be an integer of at least 1")


# ------------------------------------------------------------------------------------------------
# Escaping on every output


@pytest.fixture
def hostile_report(make_trace, tmp_path):
    """A generation whose GPU, vision range and kernel names are hostile, with FLOPs for every stage."""
    gpu = H100 | {"name": f"NVIDIA H100{CLEAR_SCREEN}[red]x[/red]"}
    trace = generation_trace(make_trace, tmp_path, vision_name=FORMULA + CLEAR_SCREEN, gpus=[gpu])
    flops = write_json(tmp_path / "f.json", {FORMULA + CLEAR_SCREEN: 10, "prefill": 100, "decode": 50})
    return trace, flops


@pytest.mark.parametrize("fmt", ["table", "md", "html", "csv", "json"])
def test_no_terminal_escape_from_the_trace_reaches_any_output(hostile_report, fmt):
    trace, flops = hostile_report
    result = invoke("report", trace, "--flops", flops, "--gpu", "H100 SXM5", "--format", fmt)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    if fmt in ("table", "md", "html", "csv"):
        assert "x1b[2J" in result.stdout  # shown, escaped
    if fmt == "json":  # data keeps the exact name
        assert FORMULA + CLEAR_SCREEN in {s["stage"] for s in json.loads(result.stdout)["stages"]}


def test_postprocess_header_escapes_the_gpu_name(make_trace, tmp_path):
    trace = generation_trace(make_trace, tmp_path, gpus=[H100 | {"name": "GPU" + CLEAR_SCREEN}])
    for fmt in ("table", "md"):
        out = invoke("postprocess", trace, "--format", fmt).stdout
        assert "\x1b" not in out and "x1b[2J" in out


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_that_could_start_a_formula_are_neutralised(make_trace, tmp_path, start):
    name = f"{start}HYPERLINK(1)"
    call, kernel = launch(1, (2, 3), (100, 110), name=name)
    trace = make_trace(tmp_path, calls=[call], kernels=[kernel], ranges=[{"start": 0, "end": 10, "text": name}])
    for table in ("ranges", "kernels", "paths"):
        out = invoke("postprocess", trace, "--format", "csv", "--table", table).stdout
        frame = pl.read_csv(io.StringIO(out))
        column = "kernel" if table == "kernels" else "path" if table == "paths" else "name"
        assert frame[column].to_list() == ["'" + name], (table, out)
    ranges = pl.read_csv(io.StringIO(invoke("postprocess", trace, "--format", "csv").stdout))
    assert ranges["wall_ns"].to_list() == [10]  # numbers untouched


def test_report_csv_neutralises_formulas_and_keeps_negative_numbers_numeric(hostile_report):
    trace, flops = hostile_report
    out = invoke("report", trace, "--flops", flops, "--gpu", "H100 SXM5", "--format", "csv").stdout
    stages = pl.read_csv(io.StringIO(out))
    assert "'" + FORMULA + "\\x1b[2J\\x1b[H" in stages["stage"].to_list()  # the quote, and ESC shown
    assert stages.schema["flops"].is_integer()


# ------------------------------------------------------------------------------------------------
# Fuzzing: any JSON value as a FLOPs file is read or refused in one line


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
stage_entries = st.one_of(
    json_values,
    st.fixed_dictionaries({"flops": json_values}, optional={"bytes": json_values, "instances": json_values}),
)
documents = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["prefill", "decode", "dtype", "model", "x"]), stage_entries, max_size=4),
    st.fixed_dictionaries(
        {"schema": st.just("stagemfu.analyze/1"), "stages": st.dictionaries(st.text(max_size=6), json_values)},
        optional={"inputs": json_values, "shapes": json_values, "notes": json_values, "model": json_values},
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_any_json_flops_file_is_read_or_refused_in_one_line(tmp_path, doc):
    path = write_json(tmp_path / "fuzz.json", doc)
    try:
        sf = read_flops_file(path)
    except FlopsFileError as err:
        assert "\n" not in str(err) and str(err).startswith(str(path))
        return
    assert sf.stages["flops"].min() >= 0
    assert sf.stages.schema["flops"] == pl.Int64


def test_analyzer_output_with_wrong_types_is_refused_by_the_library_too():
    with pytest.raises(FlopsFileError, match="^analyze\\(\\): inputs.batch"):
        flops_from_document(Document("analyze()", ANALYSIS | {"inputs": {"batch": "two"}}))
