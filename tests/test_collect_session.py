"""Collections end to end with a fake nsys that runs the command and exports a real recorded trace.

The fake (tests/fixtures/fake_nsys/nsys) behaves like nsys where stagemfu depends on it: it
runs the command, forwards SIGINT, writes the report, returns the command's exit status, and
`nsys export` writes a real SQLite export (by default the recorded tiny_vlm trace).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FAKE_NSYS, make_trace

from stagemfu.cli import cli
from stagemfu.collect import collect
from stagemfu.collect.command import ProfileOptions
from stagemfu.collect.run_info import parse_nvidia_smi

PY = sys.executable


def strings(value):
    """Every string in a JSON document, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.fixture
def fake_nsys(monkeypatch) -> str:
    monkeypatch.setenv("NSYS", str(FAKE_NSYS))
    return str(FAKE_NSYS)


def test_collect_writes_report_export_and_run_json(tmp_path, fake_nsys):
    result = collect([PY, "-c", "print('child ran')"], out_dir=tmp_path / "out", capture="nvtx:measured")
    assert result.exit_status == 0 and not result.interrupted and result.notes == ()
    assert result.rep == tmp_path / "out" / "trace.nsys-rep" and result.rep.is_file()
    assert result.sqlite == tmp_path / "out" / "trace.sqlite"
    assert result.sqlite.read_bytes().startswith(b"SQLite format 3\x00")
    doc = json.loads(result.run_json.read_text())
    assert doc["schema"] == "stagemfu.run/1"
    assert doc["command"] == [PY, "-c", "print('child ran')"]
    assert doc["nsys_command"][:2] == [fake_nsys, "profile"]
    assert "--nvtx-capture=measured@*" in doc["nsys_command"] and doc["capture"] == "nvtx:measured"
    assert doc["exit_status"] == 0 and doc["interrupted"] is False
    assert doc["versions"]["nsys"] == "2025.3.1.90" and doc["versions"]["stagemfu"]
    assert {"torch", "transformers", "python"} <= set(doc["versions"])
    assert doc["files"] == {"rep": "trace.nsys-rep", "sqlite": "trace.sqlite"}
    assert doc["started_at"].endswith("+00:00") and doc["duration_s"] >= 0


def test_run_json_holds_no_environment_and_no_host_name(tmp_path, fake_nsys, monkeypatch):
    monkeypatch.setenv("STAGEMFU_TEST_SECRET", "hunter2-token")
    result = collect([PY, "-c", "pass"], out_dir=tmp_path)
    text = result.run_json.read_text()
    assert "hunter2-token" not in text and "STAGEMFU_TEST_SECRET" not in text
    assert os.uname().nodename not in set(strings(json.loads(text)))
    assert set(json.loads(text)) == {
        "schema", "command", "nsys_command", "capture", "exit_status", "interrupted", "started_at",
        "duration_s", "gpus", "gpu_source", "versions", "files", "notes",
    }  # fmt: skip


def test_failing_command_keeps_its_status_and_its_trace(tmp_path, fake_nsys):
    result = collect([PY, "-c", "import sys; sys.exit(3)"], out_dir=tmp_path)
    assert result.exit_status == 3 and result.sqlite is not None and result.sqlite.is_file()
    assert json.loads(result.run_json.read_text())["exit_status"] == 3


def test_cli_exits_1_for_a_failing_command_after_showing_the_stages(tmp_path, fake_nsys):
    result = CliRunner().invoke(cli, ["collect", "-d", str(tmp_path), "--", PY, "-c", "import sys; sys.exit(4)"])
    assert result.exit_code == 1
    assert "exited with status 4" in result.output and "measured/prefill/vision/sam" in result.output


def test_cli_shows_the_stage_table_of_the_exported_trace(tmp_path, fake_nsys):
    result = CliRunner().invoke(cli, ["collect", "-d", str(tmp_path), "--", PY, "-c", "pass"])
    assert result.exit_code == 0, result.output
    assert f"{fake_nsys} profile --trace=cuda,nvtx" in result.output
    assert "Stages (per range name" in result.output and "decode" in result.output


def test_a_run_without_gpu_work_says_no_gpu_activity_captured(tmp_path, fake_nsys, monkeypatch):
    cpu_only = make_trace(tmp_path, ranges=[{"start": 0, "end": 10, "text": "measured"}], name="cpu.sqlite")
    monkeypatch.setenv("FAKE_NSYS_SQLITE", str(cpu_only))
    result = CliRunner().invoke(cli, ["collect", "-d", str(tmp_path / "o"), "--", PY, "-c", "pass"])
    assert result.exit_code == 0
    assert "no GPU activity captured" in result.output


def test_nsys_without_its_importer_is_explained(tmp_path, fake_nsys, monkeypatch):
    monkeypatch.setenv("FAKE_NSYS_QDSTRM", "1")
    result = collect([PY, "-c", "pass"], out_dir=tmp_path)
    assert result.sqlite is None and "QdstrmImporter" in result.notes[0]
    doc = json.loads(result.run_json.read_text())
    assert doc["files"] == {"rep": None, "sqlite": None} and "QdstrmImporter" in doc["notes"][0]
    cli_result = CliRunner().invoke(cli, ["collect", "-d", str(tmp_path), "--", PY, "-c", "pass"])
    assert cli_result.exit_code == 2 and "QdstrmImporter" in cli_result.output


def test_an_earlier_runs_report_never_passes_for_this_ones(tmp_path, fake_nsys, monkeypatch):
    assert collect([PY, "-c", "pass"], out_dir=tmp_path).sqlite is not None
    monkeypatch.setenv("FAKE_NSYS_QDSTRM", "1")
    result = collect([PY, "-c", "pass"], out_dir=tmp_path)
    assert result.sqlite is None and not result.rep.exists() and not (tmp_path / "trace.sqlite").exists()


def test_extra_nsys_arguments_and_options_reach_nsys(tmp_path, fake_nsys):
    result = collect(
        [PY, "-c", "pass"],
        out_dir=tmp_path,
        extra_nsys_args=("--stats=false",),
        options=ProfileOptions(cuda_graph_trace="graph"),
        name="graphs",
    )
    argv = json.loads(result.run_json.read_text())["nsys_command"]
    assert "--cuda-graph-trace=graph" in argv and argv[argv.index("--") - 1] == "--stats=false"
    assert result.sqlite == tmp_path / "graphs.sqlite"


def test_ctrl_c_stops_the_command_and_still_finalizes(tmp_path):
    ready = tmp_path / "ready"
    child = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    env = dict(os.environ, NSYS=str(FAKE_NSYS))
    proc = subprocess.Popen(
        [PY, "-m", "stagemfu", "collect", "-d", str(tmp_path / "o"), "--", PY, "-c", child],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the profiled command never started"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - started < 20  # the 60 s sleep was cut short
    assert proc.returncode == 1, output
    assert "was interrupted" in output and "Stages (per range name" in output
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["interrupted"] is True and doc["exit_status"] != 0
    assert doc["files"]["sqlite"] == "trace.sqlite"


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", "/abs", "x" * 300])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_name_that_is_a_path_is_one_line_naming_the_option(tmp_path, fake_nsys, name, dry_run):
    argv = [
        "collect",
        "-d",
        str(tmp_path / "o"),
        "--name",
        name,
        *(["--dry-run"] if dry_run else []),
        "--",
        PY,
        "-c",
        "pass",
    ]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --name ") and "plain file name" in lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.nsys-rep").exists()


def test_an_output_that_is_an_input_is_refused_before_anything_is_removed(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    nsys = out / "trace.nsys-rep"  # the nsys to run is where the report would go: it would be removed
    shutil.copy(FAKE_NSYS, nsys)
    argv = ["collect", "-d", str(out), "--nsys", str(nsys), "--", PY, "-c", "pass"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"Error: report {nsys}: is the same file as one of this command's inputs; writing it would destroy the "
        "input: choose another output file"
    ]
    assert nsys.read_bytes() == FAKE_NSYS.read_bytes()


def test_nsys_failing_is_blamed_on_nsys_not_the_command(tmp_path, fake_nsys, monkeypatch):
    monkeypatch.setenv("FAKE_NSYS_PROFILE_FAIL", "1")
    result = CliRunner().invoke(cli, ["collect", "-d", str(tmp_path), "--", PY, "-c", "pass"])
    assert result.exit_code == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error == [
        "Error: nsys failed (exit status 1) and wrote no report; see its messages above (the command may not have run)"
    ]
    assert "the command exited" not in result.stderr


def test_a_garbage_export_exits_non_zero_and_leaves_no_sqlite(tmp_path, fake_nsys, monkeypatch):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"nsys export died half way" * 50)
    monkeypatch.setenv("FAKE_NSYS_SQLITE", str(garbage))
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["collect", "-d", str(out), "--", PY, "-c", "pass"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "`nsys export` gave a file that is not an SQLite file" in error[0]
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "trace.nsys-rep"]
    assert json.loads((out / "run.json").read_text())["files"] == {"rep": "trace.nsys-rep", "sqlite": None}


def test_a_hanging_export_after_collect_is_stopped(tmp_path, fake_nsys, monkeypatch):
    monkeypatch.setenv("FAKE_NSYS_EXPORT_HANG", "1")
    monkeypatch.setenv("STAGEMFU_NSYS_TIMEOUT", "1")
    result = collect([PY, "-c", "pass"], out_dir=tmp_path)
    assert result.sqlite is None and "did not finish within 1 s" in result.notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "trace.nsys-rep"]


def test_nvidia_smi_rows_are_parsed():
    text = "0, NVIDIA H100 80GB HBM3, 580.159.04, 81559\n1, NVIDIA H100 80GB HBM3, 580.159.04, [N/A]\n"
    assert parse_nvidia_smi(text) == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "memory_mib": 81559},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "memory_mib": None},
    ]
    assert parse_nvidia_smi("NVIDIA-SMI has failed") == []


def test_fake_nsys_is_executable():
    assert os.access(Path(FAKE_NSYS), os.X_OK)
