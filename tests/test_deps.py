"""Optional dependencies checked where they are used: a missing package, or one older than the bound
stagemfu declares, is one line naming the package, the version needed and the pip command (exit 2
from the command line), never a traceback from deep inside.

Old and missing packages are simulated: ``installed_version`` answers for the package under test,
or the package's module is hidden (``sys.modules[name] = None``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FAKE_NSYS, ROOT

from stagemfu import deps
from stagemfu.cli import cli
from stagemfu.errors import MissingDependencyError

LLAMA = ROOT / "tests" / "fixtures" / "configs" / "llama-3.2-1b"


@pytest.fixture
def installed(monkeypatch):
    """``installed(name, version)``: make stagemfu see ``version`` (None: absent) of one package."""
    real = deps.installed_version

    def pretend(name: str, version: str | None) -> None:
        monkeypatch.setattr(deps, "installed_version", lambda p: version if p == name else real(p))

    return pretend


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    return lines[0]


def test_bounds_and_extras_come_from_the_installed_metadata():
    declared = deps.declared()
    assert declared["transformers"].extra == "model" and declared["transformers"].specifier.startswith(">=")
    assert {declared[p].extra for p in ("torch", "fvcore", "nvtx", "pillow")} == {"model"}
    assert declared["dask"].extra == "dask"
    assert declared["polars"].extra is None  # core
    assert "pytest" not in declared and "hypothesis" not in declared  # developers' extra, never offered


def test_missing_package_names_the_extra_that_installs_it(installed):
    installed("transformers", None)
    bound = deps.declared()["transformers"].specifier
    with pytest.raises(MissingDependencyError) as err:
        deps.require("torch", "transformers", needed_for="building a model")
    assert str(err.value) == f"building a model needs transformers{bound}, which is not installed: " + (
        "pip install 'stagemfu[model]'"
    )


def test_old_package_names_the_version_needed_and_found(installed):
    installed("transformers", "5.17.0")
    bound = deps.declared()["transformers"].specifier
    with pytest.raises(MissingDependencyError) as err:
        deps.require("transformers", needed_for="building a model")
    assert str(err.value) == (
        f"building a model needs transformers{bound}, but transformers 5.17.0 is installed: "
        f"pip install --upgrade 'transformers{bound}'"
    )


@pytest.mark.parametrize(
    ("version", "usable"),
    [("5.24.0", True), ("5.24", True), ("6.0.0+cpu", True), ("5.24.0rc1", False), ("5.23.9", False), ("", True)],
    ids=["equal", "short", "local-label", "pre-release", "older", "no-metadata"],
)
def test_versions_are_compared_as_pep_440(installed, monkeypatch, version, usable):
    monkeypatch.setattr(deps, "declared", lambda: {"transformers": deps.Declared(">=5.24", "model")})
    installed("transformers", version)
    assert (deps.problem("transformers", needed_for="x") is None) is usable


def test_a_hidden_module_counts_as_missing_even_with_metadata(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvtx", None)
    assert deps.installed_version("nvtx") is None
    assert "which is not installed" in deps.problem("nvtx", needed_for="x")


def test_stagemfu_run_with_an_old_transformers_exits_2_before_nsys_starts(installed, monkeypatch, tmp_path):
    """The reported case: transformers 5.17 died in the torch counter with an AttributeError."""
    installed("transformers", "5.17.0")
    monkeypatch.setenv("NSYS", str(FAKE_NSYS))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(LLAMA), "--device", "cpu", "-d", str(out)])
    line = one_line_error(result)
    assert "transformers>=" in line and "transformers 5.17.0 is installed" in line
    assert not out.exists()  # nothing was run


def test_analyze_with_an_old_transformers_notes_the_counters_it_could_not_run(installed):
    installed("transformers", "5.17.0")
    result = CliRunner().invoke(cli, ["analyze", "deepseek-ocr2"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "torch counter not run: building or running a model needs transformers>=" in text
    assert "fvcore counter not run" in text and "transformers 5.17.0 is installed" in text


def test_a_counter_asked_for_with_an_old_transformers_exits_2_naming_the_version(installed):
    installed("transformers", "5.17.0")
    line = one_line_error(CliRunner().invoke(cli, ["analyze", "deepseek-ocr2", "--counters", "torch"]))
    assert "needs transformers>=" in line and "transformers 5.17.0 is installed" in line


def test_fvcore_missing_is_a_note_naming_the_extra(installed):
    installed("fvcore", None)
    result = CliRunner().invoke(cli, ["analyze", "deepseek-ocr", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "the fvcore counter needs fvcore>=" in result.stdout and "stagemfu[model]" in result.stdout


def test_stage_ranges_with_an_old_nvtx_say_which_version(installed):
    from stagemfu.collect import api

    installed("nvtx", "0.1.0")
    with pytest.raises(MissingDependencyError, match=r"recording stage ranges needs nvtx>=.*nvtx 0\.1\.0 is installed"):
        api.NvtxSink()


def two_traces(trace_paths) -> list[str]:
    return [str(trace_paths["tiny_vlm"]), str(trace_paths["named_domain"])]


def test_several_traces_without_dask_load_one_after_the_other(installed, trace_paths, monkeypatch):
    from stagemfu import postprocess

    monkeypatch.setattr("os.cpu_count", lambda: 4)  # several workers would be chosen
    installed("dask", None)
    ct = postprocess.load_many(two_traces(trace_paths))
    assert ct.labels == tuple(two_traces(trace_paths))
    assert ct.notes[0].startswith("2 traces loaded one after the other: loading them in parallel needs dask>=")
    assert "pip install 'stagemfu[dask]'" in ct.notes[0]
    single = postprocess.load(trace_paths["tiny_vlm"]).ranges
    assert ct.per_trace.filter(trace=two_traces(trace_paths)[0]).drop("trace").equals(single)


@pytest.mark.parametrize("option", [["--jobs", "2"], ["--scheduler", "tcp://127.0.0.1:1"]], ids=["jobs", "scheduler"])
def test_asking_for_dask_without_it_exits_2_with_one_line(installed, trace_paths, option):
    installed("dask", None)
    result = CliRunner().invoke(cli, ["postprocess", *two_traces(trace_paths), *option, "--format", "json"])
    line = one_line_error(result)
    assert line.startswith("Error: loading several traces in parallel needs dask>=")
    assert line.endswith("pip install 'stagemfu[dask]'")


def test_collect_dry_run_prints_the_plan_without_nsys(tmp_path):
    """conftest hides nsys: the plan names plain ``nsys`` and a stderr note says it is missing."""
    runner = CliRunner()
    result = runner.invoke(cli, ["collect", "--dry-run", "-d", str(tmp_path / "o"), "--", "python", "x.py"])
    assert result.exit_code == 0, result.output
    profile, export = result.stdout.splitlines()
    assert profile.endswith(f"--output={tmp_path / 'o' / 'trace'} -- python x.py") and export.startswith(
        f"{Path(profile.split()[0])} export --type sqlite"
    )
    assert result.stderr.startswith("stagemfu: nsys is needed to run this plan: NSYS=")
    assert not (tmp_path / "o").exists()


def test_collect_without_dry_run_still_needs_nsys(tmp_path):
    result = CliRunner().invoke(cli, ["collect", "-d", str(tmp_path / "o"), "--", "python", "x.py"])
    assert "no such file" in one_line_error(result)


def test_collect_and_run_dry_run_need_neither_nsys_nor_torch(tmp_path):
    """In a fresh interpreter where torch, transformers, nvtx and fvcore cannot be imported."""
    import subprocess

    for argv in (["collect", "--dry-run", "--", "python", "x.py"], ["run", str(LLAMA), "--device", "cpu", "--dry-run"]):
        code = (
            "import sys\n"
            "for m in ('torch', 'transformers', 'nvtx', 'fvcore'): sys.modules[m] = None\n"
            f"sys.argv = ['stagemfu', *{argv!r}]\n"
            "from stagemfu.cli import main\n"
            "main()\n"
        )
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "NSYS": str(tmp_path / "no-nsys")}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("\n") == 2 and " profile " in done.stdout and " export " in done.stdout
        assert done.stderr.startswith("stagemfu: nsys is needed to run this plan")


def test_calibrate_without_torch_exits_2_before_nsys(installed, tmp_path):
    installed("torch", None)
    result = CliRunner().invoke(cli, ["calibrate", "--out", str(tmp_path / "cal")])
    assert one_line_error(result).startswith("Error: the calibration workload needs torch>=")


def test_readme_install_section_names_every_extra_and_its_packages():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    assert "pip install stagemfu " in section and "stagemfu[test]" in section
    for name, declared in deps.declared().items():
        if declared.extra is not None:
            assert f"stagemfu[{declared.extra}]" in section and name in section, (name, declared.extra)
