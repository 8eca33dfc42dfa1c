"""The command line: exit codes, the one-line error contract, every output format, hostile names."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time

import click
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import launch

from stagemfu import __version__, postprocess
from stagemfu.cli import cli

FORMATS = ["table", "json", "csv", "md"]
HOSTILE = "<script>alert('x')</script> | pipe \"quoted\" 'single', comma\nsecond line" + "z" * 100_000


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    assert result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def hostile_trace(make_trace, tmp_path):
    call, kernel = launch(1, (2, 3), (100, 110), name="void gemm<float, 4>(" + HOSTILE[:40] + ")")
    return make_trace(
        tmp_path,
        calls=[call],
        kernels=[kernel],
        ranges=[{"start": 0, "end": 10, "text": HOSTILE}, {"start": 1, "end": 5, "text": "inner|x"}],
    )


# --------------------------------------------------------------------------------------------
# Basics


def test_version_prints_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    """Every command below ``group``, loading the lazily registered ones (``group.commands`` holds
    only those some earlier test happened to load)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_every_command_has_help():
    commands = [((), cli), *_commands(cli)]
    assert any(path == ("postprocess",) for path, _ in commands)
    for path, command in commands:
        assert (command.help or "").strip(), f"{' '.join(path) or 'stagemfu'} has no docstring"
        for flag in ("--help", "-h"):
            result = invoke(*path, flag)
            assert result.exit_code == 0, (path, result.output)
            assert result.stdout.startswith("Usage:"), (path, result.stdout[:80])
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help", "version"):
                assert (param.help or "").strip(), f"{path} option {param.opts} has no help"


def test_json_carries_the_schema_and_the_contract_fields(trace_paths):
    result = invoke("postprocess", trace_paths["tiny_vlm"], "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "stagemfu.postprocess/1"
    assert set(doc["trace"]) >= {"path", "nsys_version", "schema_version"}
    assert doc["trace"]["nsys_version"].startswith("2025.3")
    assert {
        "gpus",
        "ranges",
        "paths",
        "instance_stats",
        "kernels",
        "categories",
        "devices",
        "unattributed",
        "totals",
        "notes",
    } <= set(doc)
    assert doc["gpus"][0]["name"].startswith("NVIDIA H100")
    assert {"id", "name", "sms", "clock_hz"} <= set(doc["gpus"][0])
    for row in doc["ranges"]:
        assert {
            "domain",
            "name",
            "instances",
            "gpu_instances",
            "wall_ns",
            "span_ns",
            "busy_ns",
            "kernel_ns",
            "gpu_ops",
            "kernels",
        } <= set(row)
    for row in doc["paths"]:
        assert {
            "path",
            "instances",
            "wall_ns",
            "span_ns",
            "busy_ns",
            "exclusive_busy_ns",
            "kernel_ns",
            "gpu_ops",
        } <= set(row)
    for key in ("wall_ns", "span_ns", "busy_ns", "kernel_ns", "gpu_ops"):
        assert all(isinstance(row[key], int) for row in doc["ranges"])
    assert isinstance(doc["notes"], list)


def test_json_numbers_are_the_library_numbers(trace_paths, loaded):
    doc = json.loads(invoke("postprocess", trace_paths["named_domain"], "--format", "json").stdout)
    st = loaded["named_domain"]
    assert doc["ranges"] == st.ranges.to_dicts()
    assert doc["paths"] == st.paths.to_dicts()
    assert doc["totals"] == st.totals.to_dicts()[0]
    assert doc["unattributed"] == st.unattributed.to_dicts()[0]


def test_within_option_restricts_the_report(trace_paths):
    doc = json.loads(invoke("postprocess", trace_paths["tiny_vlm"], "--within", "measured", "--format", "json").stdout)
    names = {r["name"]: r for r in doc["ranges"]}
    assert "warmup" not in names
    assert names["measured"]["instances"] == 1
    assert names["prefill"]["instances"] == 1
    assert all(p["path"].startswith("measured") for p in doc["paths"])


def test_range_option_repeats(trace_paths):
    doc = json.loads(
        invoke("postprocess", trace_paths["tiny_vlm"], "--range", "decode", "--range", "sam", "--format", "json").stdout
    )
    assert sorted(r["name"] for r in doc["ranges"]) == ["decode", "sam"]


def test_top_limits_kernels_per_stage(trace_paths):
    doc = json.loads(invoke("postprocess", trace_paths["tiny_vlm"], "--top-kernels", "2", "--format", "json").stdout)
    per_stage = pl.DataFrame(doc["kernels"]).group_by("domain", "name").len()
    assert per_stage["len"].max() == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_writes_to_stdout(trace_paths, fmt):
    result = invoke("postprocess", trace_paths["cuda_graph_node"], "--format", fmt)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "graph_replay" in result.stdout


def test_csv_is_the_ranges_table(trace_paths, loaded):
    result = invoke("postprocess", trace_paths["tiny_vlm"], "--format", "csv")
    frame = pl.read_csv(io.StringIO(result.stdout))
    expected = loaded["tiny_vlm"].ranges
    assert frame.select("name", "span_ns", "busy_ns").rows() == expected.select("name", "span_ns", "busy_ns").rows()


def test_markdown_has_a_table_per_result(trace_paths):
    out = invoke("postprocess", trace_paths["tiny_vlm"], "--format", "md").stdout
    assert out.count("|---") >= 2
    assert "measured/prefill/vision/sam" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_option_writes_the_file(trace_paths, tmp_path, fmt):
    target = tmp_path / f"out.{fmt}"
    result = invoke("postprocess", trace_paths["tiny_vlm"], "--format", fmt, "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    text = target.read_text(encoding="utf-8")
    assert "decode" in text
    if fmt == "json":
        assert json.loads(text)["schema"] == "stagemfu.postprocess/1"


# --------------------------------------------------------------------------------------------
# Mistakes: exit 2, one line


def test_missing_trace_exits_2_with_one_line(tmp_path):
    assert_one_line_error(invoke("postprocess", tmp_path / "nope.sqlite"), "nope.sqlite")


def test_missing_nvtx_table_exits_2_with_one_line(make_trace, tmp_path):
    path = make_trace(tmp_path, omit=["NVTX_EVENTS"])
    assert_one_line_error(invoke("postprocess", path), str(path), "NVTX_EVENTS")


def test_not_sqlite_exits_2_with_one_line(tmp_path):
    path = tmp_path / "x.sqlite"
    path.write_text("hello\n")
    assert_one_line_error(invoke("postprocess", path), str(path))


def test_unknown_within_exits_2_with_one_line(trace_paths):
    assert_one_line_error(invoke("postprocess", trace_paths["tiny_vlm"], "--within", "nosuch"), "nosuch")


def test_unknown_range_exits_2_with_one_line(trace_paths):
    assert_one_line_error(invoke("postprocess", trace_paths["tiny_vlm"], "--range", "nosuch"), "nosuch")


def test_malformed_categories_exit_2_with_one_line(trace_paths, tmp_path):
    rules = tmp_path / "cats.csv"
    rules.write_text("category,pattern\nbad,(\n")
    assert_one_line_error(invoke("postprocess", trace_paths["tiny_vlm"], "--categories", rules), str(rules))


def test_unwritable_output_exits_2_with_one_line(trace_paths, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "out.json"
    assert_one_line_error(invoke("postprocess", trace_paths["tiny_vlm"], "--format", "json", "-o", target), str(target))


def test_corrupt_xz_trace_exits_2_with_one_line(tmp_path):
    path = tmp_path / "trace.sqlite.xz"
    path.write_bytes(b"not xz at all")
    assert_one_line_error(invoke("postprocess", path), str(path))


def test_report_file_without_nsys_exits_2_with_one_line(tmp_path):
    report = tmp_path / "run.nsys-rep"
    report.write_bytes(b"not really a report")
    assert_one_line_error(invoke("postprocess", report), str(report), "nsys")


@pytest.mark.parametrize(
    "args",
    [
        ["postprocess", "{trace}", "--format", "xml"],
        ["postprocess", "{trace}", "--top", "0"],
        ["postprocess", "{trace}", "--top", "many"],
        ["postprocess", "{trace}", "--bogus"],
        ["postprocess"],
        ["nosuchcommand"],
        ["postprocess", "{trace}", "-o", "{dir}"],
    ],
    ids=[
        "bad-format",
        "top-zero",
        "top-not-int",
        "unknown-option",
        "missing-trace",
        "unknown-command",
        "output-is-dir",
    ],
)
def test_usage_mistakes_exit_2_with_one_line(trace_paths, tmp_path, args):
    argv = [a.format(trace=trace_paths["tiny_vlm"], dir=tmp_path) for a in args]
    assert_one_line_error(invoke(*argv))


# --------------------------------------------------------------------------------------------
# Hostile names


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_range_name_renders_in_every_format(hostile_trace, fmt):
    result = invoke("postprocess", hostile_trace, "--format", fmt)
    assert result.exit_code == 0, result.output[:2000]
    assert "Traceback" not in result.output


def test_json_round_trips_the_exact_hostile_name(hostile_trace):
    doc = json.loads(invoke("postprocess", hostile_trace, "--format", "json").stdout)
    assert HOSTILE in {r["name"] for r in doc["ranges"]}
    assert HOSTILE in {p["path"] for p in doc["paths"]}
    assert f"{HOSTILE}/inner|x" in {p["path"] for p in doc["paths"]}


def test_csv_round_trips_the_exact_hostile_name(hostile_trace):
    out = invoke("postprocess", hostile_trace, "--format", "csv").stdout
    assert HOSTILE in pl.read_csv(io.StringIO(out))["name"].to_list()


UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def test_markdown_escapes_pipes_markup_and_newlines(hostile_trace):
    out = invoke("postprocess", hostile_trace, "--format", "md").stdout
    assert "<script>" not in out
    assert "\nsecond line" not in out  # the name's newline never starts a new Markdown line
    assert "z" * 1000 not in out  # 100 kB names are cut for display
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") or line.startswith("|:--"):
            width = len(UNESCAPED_PIPE.findall(lines[i - 1]))
            for row in lines[i + 1 :]:
                if not row.startswith("|"):
                    break
                assert len(UNESCAPED_PIPE.findall(row)) == width, row[:200]
    assert any("\\| pipe" in line for line in lines)
    assert any("inner\\|x" in line for line in lines)


def test_table_output_shows_hostile_name_on_one_line(hostile_trace, tmp_path):
    target = tmp_path / "out.txt"
    assert invoke("postprocess", hostile_trace, "-o", target).exit_code == 0
    text = target.read_text(encoding="utf-8")
    assert "z" * 1000 not in text
    assert not any(line.startswith("second line") for line in text.splitlines())


# --------------------------------------------------------------------------------------------
# Inputs are never changed


def test_read_only_input_directory_works_and_input_is_unchanged(trace_paths, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "trace.sqlite"
    shutil.copy(trace_paths["named_domain"], path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        for fmt in FORMATS:
            assert invoke("postprocess", path, "--format", fmt).exit_code == 0
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert [p.name for p in folder.iterdir()] == ["trace.sqlite"]
    finally:
        folder.chmod(0o755)


def test_library_and_cli_agree_on_the_within_numbers(trace_paths):
    st = postprocess.load(trace_paths["tiny_vlm"], within="measured")
    doc = json.loads(invoke("postprocess", trace_paths["tiny_vlm"], "--within", "measured", "--format", "json").stdout)
    assert doc["ranges"] == st.ranges.to_dicts()
    assert doc["within"] == "measured"


# --------------------------------------------------------------------------------------------
# Progress bar and --quiet


def test_quiet_changes_nothing_but_the_progress_bar(trace_paths):
    loud = invoke("postprocess", trace_paths["tiny_vlm"], "--format", "json")
    quiet = invoke("postprocess", trace_paths["tiny_vlm"], "--format", "json", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout) == json.loads(loud.stdout)


def test_progress_bar_draws_only_after_the_delay_and_not_when_quiet(monkeypatch):
    from rich.progress import Progress

    from stagemfu.cli import postprocess as command

    with command.progress_bar(quiet=True, force=True) as progress:
        assert progress is None
    started = []
    monkeypatch.setattr(Progress, "start", lambda self: started.append(self))
    with command.progress_bar(quiet=False, force=True) as progress:
        progress("reading", 1, 3)  # a short load: the delay has not passed, nothing is drawn
    assert started == []
    monkeypatch.setattr(command, "PROGRESS_DELAY_S", 0.0)
    with command.progress_bar(quiet=False, force=True) as progress:
        progress("reading", 2, 3)
        for _ in range(200):  # the timer thread starts the bar
            if started:
                break
            time.sleep(0.01)
    assert len(started) == 1
    task = started[0].tasks[0]
    assert (task.description, task.completed, task.total) == ("reading", 2, 3)


def test_postprocess_reports_progress_of_each_step(trace_paths):
    seen = []
    postprocess.load(trace_paths["tiny_vlm"], progress=lambda *a: seen.append(a))
    assert [s[0].split(": ")[-1] for s in seen] == [
        "NVTX ranges",
        "GPU operations",
        "launching calls",
        "computing stage times",
    ]
