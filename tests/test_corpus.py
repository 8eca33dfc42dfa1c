"""Every trace of the corpus (other people's traces, ``tests/fixtures/corpus``): a report or exit 2
with one line, never a traceback, never a changed input; and the counts its README states.

nsys is hidden for the whole session (conftest sets NSYS to a path that does not exist), so
.nsys-rep/.qdrep reports take the "nsys not found" path on every machine.
"""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import CORPUS as COMMITTED
from conftest import corpus_dir

from stagemfu import postprocess
from stagemfu.cli import cli

CORPUS = corpus_dir()
FILES = sorted(p.name for p in CORPUS.iterdir())
README = (COMMITTED / "README.md").read_text(encoding="utf-8")


def test_corpus_is_present():
    assert sum(name.endswith(".sqlite") for name in FILES) == 4
    assert sum(name.endswith(".pt.trace.json.gz") for name in FILES) == 3
    assert len(FILES) == 7


@pytest.mark.parametrize("name", FILES)
def test_corpus_readme_names_each_trace_and_its_source(name):
    committed = name if name.endswith(".gz") else f"{name}.xz"
    row = next((line for line in README.splitlines() if line.startswith(f"| `{committed}` |")), None)
    assert row is not None, f"{committed} has no row in {COMMITTED / 'README.md'}"
    source, blob, licence = (cell.strip() for cell in row.split("|")[2:5])
    assert "/" in source and len(blob) == 40 and licence


@pytest.mark.parametrize("name", [n for n in FILES if n.endswith(".gz")])
def test_unchanged_corpus_copies_are_the_upstream_blobs(name):
    """A copy the README calls unchanged hashes to the upstream blob it names (``git hash-object``)."""
    data = (COMMITTED / name).read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert f"| `{name}` |" in README and f"| {blob} |" in README


def test_nsys_is_hidden_during_tests():
    from stagemfu.postprocess.export import find_nsys

    assert find_nsys() is None


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """``stagemfu postprocess FILE --format json`` of every corpus file: exit code, stdout, stderr."""
    out = {}
    for name in FILES:
        path = CORPUS / name
        before = sha256(path)
        result = CliRunner().invoke(cli, ["postprocess", str(path), "--format", "json"])
        assert sha256(path) == before, f"{name} changed"
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.exc_info)
        out[name] = (result.exit_code, result.stdout, result.stderr)
    return out


@pytest.mark.parametrize("name", FILES)
def test_corpus_file_gives_a_report_or_one_error_line(reports, name):
    code, stdout, stderr = reports[name]
    assert "Traceback" not in stdout + stderr
    assert code == 0, (name, code, stderr)
    assert json.loads(stdout)["schema"] == "stagemfu.postprocess/1"


@pytest.mark.parametrize("suffix", [".nsys-rep", ".qdrep"])
def test_report_container_without_nsys_says_how_to_export(tmp_path, suffix):
    """The corpus's reports are not in the repository (README): without nsys their bytes are never read."""
    path = tmp_path / f"report1{suffix}"
    path.write_bytes(b"an Nsight Systems report")
    result = CliRunner().invoke(cli, ["postprocess", str(path), "--format", "json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"Error: {path}:") and result.stderr.count("\n") == 1
    assert "nsys export" in result.stderr and "NSYS" in result.stderr


def doc(reports, name) -> dict:
    code, stdout, _ = reports[name]
    assert code == 0
    return json.loads(stdout)


def kernels_of(name: str) -> pl.DataFrame:
    trace = postprocess.read(CORPUS / name)
    return trace.ops.held.filter(pl.col("kind") == "kernel")


def test_nsysai_two_gpus_kernel_counts(reports):
    name = "nsysai_mfu_2gpu_h100_torchrun_nccl.sqlite"
    assert doc(reports, name)["totals"]["kernels"] == 4010
    per_device = kernels_of(name).group_by("device").len().sort("device").rows()
    assert per_device == [(0, 1993), (1, 2017)]
    assert doc(reports, name)["gpus"] == []  # the window has no TARGET_INFO_GPU table
    assert any("TARGET_INFO_GPU" in note for note in doc(reports, name)["notes"])


def test_nsysai_ranges_touching_both_gpus_report_each_device(reports):
    devices = {row["device"] for row in doc(reports, "nsysai_mfu_2gpu_h100_torchrun_nccl.sqlite")["devices"]}
    assert devices == {0, 1}


def test_nvfuser_kernels_and_nvtx_events(reports):
    d = doc(reports, "nvfuser_thunder_phi3_xent_h200.sqlite")
    assert d["totals"]["kernels"] == 18
    assert sum(r["instances"] for r in d["ranges"]) == 13_513


def test_memfusion_tensorrt_domain(reports):
    d = doc(reports, "memfusion_tensorrt_resnet_rtx3090_nsys2023.1.sqlite")
    assert d["totals"]["kernels"] == 36
    assert sum(r["instances"] for r in d["ranges"] if r["domain"] == "TensorRT") == 59
    assert {r["domain"] for r in d["ranges"]} == {"TensorRT"}


def test_dlprof_oldest_schema_two_streams(reports):
    d = doc(reports, "dlprof_pytorch_cnn_rtx2070s_nsys2022.1.sqlite")
    assert d["totals"]["kernels"] == 59
    assert d["trace"]["nsys_version"] != "unknown"  # read from EXPORT_META_DATA
    assert kernels_of("dlprof_pytorch_cnn_rtx2070s_nsys2022.1.sqlite")["stream"].n_unique() == 2


def test_kineto_ddp_trace_of_hta_names_its_rank_and_format(reports):
    d = doc(reports, "hta_ddp_v100_ns_resolution.pt.trace.json.gz")
    assert d["trace"]["format"] == "kineto" and d["trace"]["rank"] == "0"
    assert d["totals"]["kernels"] == 4350
    assert {r["name"] for r in d["ranges"]} >= {"## forward ##", "Optimizer.step#SGD.step", "ProfilerStep#101"}


def test_kineto_2021_trace_has_no_stages_and_says_why(reports):
    d = doc(reports, "kineto_tbplugin_resnet50_2021_oldformat.pt.trace.json.gz")
    assert d["ranges"] == [] and d["totals"]["kernels"] == 8772  # capitalised "Kernel" categories
    assert d["unattributed"]["gpu_ops"] == d["totals"]["gpu_ops"]
    assert any("no user_annotation events" in note for note in d["notes"])


def test_kineto_vllm_trace_of_tracelens_attributes_every_operation(reports):
    d = doc(reports, "tracelens_b200_vllm_tp8_eager.pt.trace.json.gz")
    assert d["trace"]["rank"] == "0" and d["trace"]["world_size"] == "8"
    assert d["gpus"][0]["name"] == "NVIDIA B200" and d["gpus"][0]["sms"] == 148
    assert d["totals"]["kernels"] == 768 and d["unattributed"]["gpu_ops"] == 0


@pytest.mark.parametrize("name", FILES)
def test_corpus_numbers_are_consistent(reports, name):
    d = doc(reports, name)
    for row in d["ranges"]:
        assert 0 <= row["busy_ns"] <= row["span_ns"]
        assert row["exclusive_busy_ns"] <= row["busy_ns"]
        assert row["gpu_instances"] <= row["instances"]
    assert d["unattributed"]["gpu_ops"] <= d["totals"]["gpu_ops"]
    assert d["totals"]["busy_ns"] <= d["totals"]["span_ns"]
