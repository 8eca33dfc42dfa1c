"""torch.profiler traces through the report, compare and many-trace paths: op FLOPs from the ops'
``Input Dims`` equal torch's own FlopCounterMode count of the same step, one file per rank loads as
many traces, and a Kineto report compares with an nsys one."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES

from stagemfu.cli import cli
from stagemfu.report import report

KINETO = FIXTURES / "llama_train.pt.trace.json.gz"
STEPS = 4  # the warm-up step and three measured steps, all recorded with record_shapes=True


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads((FIXTURES / "llama_train.truth.json").read_text())


@pytest.fixture(scope="module")
def op_report():
    return report(KINETO, op_flops=True)


def test_op_flops_per_step_equal_torchs_flop_counter(op_report, truth):
    rows = {r["stage"]: r for r in op_report.stages.iter_rows(named=True)}
    for stage in ("step", "forward", "backward"):
        assert rows[stage]["instances"] == STEPS
        assert rows[stage]["flops"] == STEPS * truth[stage], stage  # the same formulas on the same shapes
    assert rows["optimizer"]["flops"] == 0 == truth["optimizer"]
    assert rows["warmup"]["flops"] == truth["step"]


def test_op_flops_mfu_and_coverage_come_with_the_uncounted_ops(op_report):
    step = op_report.stages.filter(op_report.stages["stage"] == "step").row(0, named=True)
    assert 0.4 < step["mfu_kernel"] < 0.45 and 0.5 < step["flops_coverage"] < 0.6
    assert "aten::_fused_adamw_" in op_report.uncounted_ops["op"].to_list()
    assert op_report.peak.gpu == "NVIDIA H200" and op_report.peak.source == "datasheet"


def test_report_op_flops_command_line(tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["report", str(KINETO), "--op-flops", "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "stagemfu.report/1" and doc["peak"]["gpu"] == "NVIDIA H200"


def test_op_flops_without_cpu_ops_says_how_to_record(tmp_path):
    text = gzip.decompress(KINETO.read_bytes()).replace(b'"cat": "cpu_op"', b'"cat": "cpu_opx"')
    path = tmp_path / "no_ops.pt.trace.json"
    path.write_bytes(text)
    result = CliRunner().invoke(cli, ["report", str(path), "--op-flops"])
    assert result.exit_code == 2 and "record_shapes=True" in result.stderr and len(result.stderr.splitlines()) == 1


def rank_files(folder: Path, ranks: int) -> list[Path]:
    """The fixture as the files of ``ranks`` ranks, each naming its rank in distributedInfo."""
    text = gzip.decompress(KINETO.read_bytes())
    paths = []
    for rank in range(ranks):
        info = b'"distributedInfo": {"rank": %d, "world_size": %d},\n  "traceEvents"' % (rank, ranks)
        path = folder / f"worker{rank}.1234.pt.trace.json.gz"
        path.write_bytes(gzip.compress(text.replace(b'"traceEvents"', info, 1), compresslevel=1))
        paths.append(path)
    return paths


def test_one_file_per_rank_goes_through_the_many_trace_path(tmp_path):
    rank_files(tmp_path, 3)
    (tmp_path / "run.json").write_text("{}")  # not a trace: left out of the directory
    result = CliRunner().invoke(cli, ["postprocess", str(tmp_path), "--jobs", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [t["trace"]["rank"] for t in doc["traces"]] == ["0", "1", "2"]
    assert all(t["trace"]["format"] == "kineto" and t["trace"]["world_size"] == "3" for t in doc["traces"])
    combined = {r["name"]: r for r in doc["combined"]}
    one = {r["name"]: r for r in doc["traces"][0]["ranges"]}
    assert combined["forward"]["traces"] == 3
    assert combined["forward"]["kernel_ns"] == 3 * one["forward"]["kernel_ns"]
    assert combined["forward"]["busy_max_ns"] == combined["forward"]["busy_min_ns"] == one["forward"]["busy_ns"]
    assert doc["stragglers"] == []


def test_ranks_load_on_dask_as_one_after_the_other(tmp_path):
    pytest.importorskip("distributed")
    rank_files(tmp_path, 2)
    serial = CliRunner().invoke(cli, ["postprocess", str(tmp_path), "--jobs", "1", "--format", "json"])
    parallel = CliRunner().invoke(cli, ["postprocess", str(tmp_path), "--jobs", "2", "--format", "json"])
    assert serial.exit_code == parallel.exit_code == 0, parallel.output
    assert json.loads(serial.stdout)["combined"] == json.loads(parallel.stdout)["combined"]


def test_compare_a_torch_profiler_report_with_an_nsys_one(tmp_path):
    flops = tmp_path / "flops.yaml"
    flops.write_text("stages:\n  forward: 2.15e12\n  backward: 4.37e12\n")
    sides = []
    for name, trace in (("kineto", KINETO), ("nsys", FIXTURES / "llama_train.sqlite.xz")):
        out = tmp_path / f"{name}.json"
        args = ["report", str(trace), "--flops", str(flops), "--launches", "process", "--format", "json"]
        assert CliRunner().invoke(cli, [*args, "-o", str(out)]).exit_code == 0
        sides.append(str(out))
    result = CliRunner().invoke(cli, ["compare", *sides, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "forward" in result.stdout and "Traceback" not in result.output
