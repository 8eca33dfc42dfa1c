"""Outputs never destroy inputs, appear whole or not at all, and a failing standard output is one line.

Inputs are files the command reads: the trace (plain or compressed), --flops, --categories, compare's
two sides, and files found beside the trace (shapes.json). An output path that names one of them,
directly or through a symbolic or hard link, is refused with one line and exit 2, and the input
keeps its bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import lzma
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import FIXTURES
from report_traces import generation_trace, write_json

from stagemfu import files
from stagemfu.cli import cli
from stagemfu.errors import OutputError

PY = sys.executable


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A real recorded export, copied where the test may try to overwrite it."""
    target = tmp_path / "tiny_vlm.sqlite"
    with lzma.open(FIXTURES / "tiny_vlm.sqlite.xz") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def alias(kind: str, target: Path, where: Path) -> Path:
    """A path naming ``target``: itself, a relative spelling, a symbolic link or a hard link."""
    if kind == "same":
        return target
    if kind == "relative":
        return Path(os.path.relpath(target.parent / "." / ".." / target.parent.name / target.name))
    link = where / f"{kind}-link{target.suffix}"
    if kind == "symlink":
        link.symlink_to(target)
    else:
        os.link(target, link)
    return link


# --------------------------------------------------------------------------------------------
# An output that is an input


@pytest.mark.parametrize("kind", ["same", "relative", "symlink", "hardlink"])
@pytest.mark.parametrize("fmt", ["table", "json"])
def test_output_over_the_trace_is_refused_and_the_trace_kept(trace, tmp_path, kind, fmt):
    before = digest(trace)
    out = alias(kind, trace, tmp_path)
    one_line_error(invoke("postprocess", trace, "--format", fmt, "-o", out), "-o", "input")
    assert digest(trace) == before


def test_html_over_a_compressed_trace_is_refused(toy, analysis, tmp_path):
    packed = tmp_path / "toy.sqlite.xz"
    packed.write_bytes(lzma.compress(toy.read_bytes()))
    before = digest(packed)
    one_line_error(invoke("report", packed, "--flops", analysis, "--html", packed), "--html", str(packed))
    assert digest(packed) == before


@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
def test_output_over_the_flops_file_is_refused(toy, analysis, tmp_path, kind):
    before = digest(analysis)
    one_line_error(invoke("report", toy, "--flops", analysis, "-o", alias(kind, analysis, tmp_path)), "-o")
    assert digest(analysis) == before


def test_output_over_a_compare_side_is_refused(toy, analysis, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for side in (a, b):
        assert invoke("report", toy, "--flops", analysis, "--format", "json", "-o", side).exit_code == 0
    before = digest(b)
    one_line_error(invoke("compare", a, b, "-o", b), "-o", str(b))
    assert digest(b) == before


def test_output_over_the_categories_file_is_refused(trace, tmp_path):
    rules = tmp_path / "cats.csv"
    rules.write_text("category,pattern\nmine,gemm\n")
    one_line_error(invoke("postprocess", trace, "--categories", rules, "--format", "csv", "-o", rules), "-o")
    assert rules.read_text() == "category,pattern\nmine,gemm\n"


def test_output_over_a_file_read_beside_the_trace_is_refused(make_trace, tmp_path):
    # shapes.json is no option of the command: it is caught because the command opened it for reading.
    trace = generation_trace(make_trace, tmp_path)
    inputs = {"mode": "base", "text_tokens": 8, "new_tokens": 3, "batch": 1, "dtype": "bf16", "image_size": None}
    shapes = write_json(
        tmp_path / "shapes.json", {"schema": "stagemfu.shapes/1", "model": "deepseek-ocr2", "inputs": inputs}
    )
    before = digest(shapes)
    result = invoke("report", trace, "--counters", "analytic", "--format", "json", "-o", shapes)
    one_line_error(result, "-o", "shapes.json")
    assert digest(shapes) == before


def test_a_database_output_is_refused_over_a_hard_link_or_a_file_read_beside_the_trace(make_trace, tmp_path):
    trace = generation_trace(make_trace, tmp_path)
    before = digest(trace)
    one_line_error(invoke("postprocess", trace, "--format", "sqlite", "-o", alias("hardlink", trace, tmp_path)), "-o")
    assert digest(trace) == before
    inputs = {"mode": "base", "text_tokens": 8, "new_tokens": 3, "batch": 1, "dtype": "bf16", "image_size": None}
    shapes = write_json(
        tmp_path / "shapes.json", {"schema": "stagemfu.shapes/1", "model": "deepseek-ocr2", "inputs": inputs}
    )
    before = digest(shapes)
    one_line_error(invoke("report", trace, "--counters", "analytic", "--format", "sqlite", "-o", shapes), "shapes.json")
    assert digest(shapes) == before


def test_a_failed_database_write_leaves_the_old_file_and_nothing_else(trace, tmp_path, monkeypatch):
    from stagemfu.report.render import sqlite as sqlite_output

    out = tmp_path / "out" / "times.db"
    out.parent.mkdir()
    out.write_text("the previous database")

    def interrupted(path, frames):  # the tables exist; Ctrl-C while their rows go in
        raise KeyboardInterrupt

    monkeypatch.setattr(sqlite_output, "_append_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sqlite_output.write_sqlite(out, {"t": pl.DataFrame({"a": [1]})}, {})
    assert out.read_text() == "the previous database" and os.listdir(out.parent) == ["times.db"]


def test_two_outputs_on_one_file_are_refused(toy, analysis, tmp_path):
    out = tmp_path / "out.html"
    one_line_error(invoke("report", toy, "--flops", analysis, "--format", "json", "-o", out, "--html", out), "--html")
    assert not out.exists()
    out.write_text("an earlier page")
    link = alias("hardlink", out, tmp_path)
    one_line_error(invoke("report", toy, "--flops", analysis, "--format", "json", "-o", out, "--html", link), "--html")
    assert out.read_text() == "an earlier page"


def test_analyze_output_over_its_config_is_refused(tmp_path):
    config = tmp_path / "config.json"
    shutil.copy(Path(__file__).parent / "fixtures" / "configs" / "llama-3.2-1b" / "config.json", config)
    before = digest(config)
    one_line_error(invoke("analyze", config, "--counters", "analytic", "-o", config), "-o")
    assert digest(config) == before


def test_refusal_comes_before_any_work(trace, tmp_path, monkeypatch):
    import stagemfu.postprocess as pp

    monkeypatch.setattr(pp, "load", lambda *a, **k: pytest.fail("the trace was loaded"))
    one_line_error(invoke("postprocess", trace, "-o", trace))


# --------------------------------------------------------------------------------------------
# Inputs that are not regular files


@pytest.mark.parametrize("option", [None, "--categories"])
def test_fifo_input_is_one_line_not_a_hang(trace, tmp_path, option):
    fifo = tmp_path / "x.sqlite"
    os.mkfifo(fifo)
    args = ["postprocess", fifo] if option is None else ["postprocess", trace, option, fifo]
    one_line_error(invoke(*args), str(fifo), "FIFO", "not a regular file")


def test_fifo_flops_file_is_one_line(toy, tmp_path):
    fifo = tmp_path / "flops.json"
    os.mkfifo(fifo)
    one_line_error(invoke("report", toy, "--flops", fifo), "--flops", "FIFO")


def test_fifo_compressed_trace_is_one_line(tmp_path):
    fifo = tmp_path / "x.sqlite.xz"
    os.mkfifo(fifo)
    one_line_error(invoke("postprocess", fifo), str(fifo), "FIFO")


def test_device_as_trace_is_one_line():
    one_line_error(invoke("postprocess", "/dev/zero"), "/dev/zero", "character device")


# --------------------------------------------------------------------------------------------
# Whole or not at all


def test_a_failed_write_keeps_the_old_output_and_leaves_no_temporary(trace, tmp_path, monkeypatch):
    out = tmp_path / "out" / "times.json"
    out.parent.mkdir()
    out.write_text("the previous report\n")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full_disk)
    one_line_error(invoke("postprocess", trace, "--format", "json", "-o", out), str(out), "No space left")
    assert out.read_text() == "the previous report\n"
    assert os.listdir(out.parent) == ["times.json"]


def test_a_failed_flop_count_write_keeps_the_earlier_count(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import stagemfu
    from stagemfu.errors import CollectError

    (tmp_path / "flops.json").write_text("the earlier count")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(CollectError, match="No space left"), stagemfu.count_flops(tmp_path):
        pass
    assert (tmp_path / "flops.json").read_text() == "the earlier count"
    assert os.listdir(tmp_path) == ["flops.json"]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(KeyboardInterrupt), files.replacing(out) as fh:
        fh.write(b"half of the new")
        raise KeyboardInterrupt
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_output_keeps_its_permissions_and_links_are_written_through(trace, tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert invoke("postprocess", trace, "--format", "json", "-o", link).exit_code == 0
    assert link.is_symlink() and '"stagemfu.postprocess/1"' in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_a_new_output_gets_the_usual_permissions(trace, tmp_path):
    out = tmp_path / "new.json"
    old = os.umask(0o022)
    try:
        assert invoke("postprocess", trace, "--format", "json", "-o", out).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_output_to_a_device_is_written_in_place(trace):
    assert invoke("postprocess", trace, "--format", "json", "-o", "/dev/null").exit_code == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_refuse_overwriting_names_the_input_behind_a_link(tmp_path):
    source = tmp_path / "in.sqlite"
    source.write_bytes(b"x")
    link = tmp_path / "out.json"
    link.symlink_to(source)
    with pytest.raises(OutputError, match=f"the input {source}"):
        files.refuse_overwriting({"-o": link}, [source])
    files.refuse_overwriting({"-o": tmp_path / "other.json"}, [source, tmp_path / "missing"])


# --------------------------------------------------------------------------------------------
# Standard output that fails


def run_cli(*args: object, stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "stagemfu", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args", [["postprocess", "{trace}"], ["postprocess", "{trace}", "--format", "json"], ["--help"]]
)
def test_full_standard_output_is_one_error_line(trace, args):
    with open("/dev/full", "w") as full:
        done = run_cli(*[a.format(trace=trace) for a in args], stdout=full.fileno())
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "Error: standard output: cannot write (No space left on device); write to a file with -o instead"
    ]


def test_closed_pipe_exits_quietly(trace):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as after `| head -1`
    try:
        done = run_cli("postprocess", trace, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


def test_files_whose_names_are_not_utf8_are_read_and_written_in_every_format(trace, tmp_path):
    """Python holds a name's byte 0xff as a lone surrogate; JSON and SQLite text escape it (\\udcff)."""
    odd = tmp_path / os.fsdecode(b"run-\xff.sqlite")
    shutil.copy(trace, odd)
    outputs = {
        fmt: tmp_path / os.fsdecode(b"out-\xff." + fmt.encode()) for fmt in ("table", "md", "csv", "json", "sqlite")
    }
    for fmt, out in outputs.items():
        result = invoke("postprocess", odd, "--format", fmt, "-o", out)
        assert result.exit_code == 0, (fmt, result.output[-500:])
    assert json.loads(outputs["json"].read_text(encoding="utf-8"))["trace"]["path"] == str(odd)
    stdout = invoke("postprocess", odd, "--format", "json").stdout
    assert json.loads(stdout)["trace"]["path"] == str(odd)
    with sqlite3.connect(outputs["sqlite"]) as db:
        trace_meta = json.loads(db.execute("select value from stagemfu where key = 'trace'").fetchone()[0])
    assert trace_meta["path"] == str(odd)
