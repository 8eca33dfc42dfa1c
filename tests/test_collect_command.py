"""The nsys command lines `stagemfu collect` runs, nsys discovery, and the runner's own command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from stagemfu.cli import cli
from stagemfu.collect import nsys as nsys_mod
from stagemfu.collect.command import ProfileOptions, capture_args, profile_argv
from stagemfu.collect.model_run import runner_command
from stagemfu.collect.run_options import RunnerOptions, options_from_params, runner_options
from stagemfu.errors import CollectError
from stagemfu.models import Inputs

DEFAULT_FLAGS = ["--trace=cuda,nvtx", "--sample=none", "--cpuctxsw=none", "--cuda-graph-trace=node"]
TAIL = ["--force-overwrite=true", "--output=out/trace"]


def fake_executable(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'NVIDIA Nsight Systems version 2024.6.2.225-32e0dda'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# --------------------------------------------------------------------------------------------
# Golden argv


def test_default_profile_traces_cuda_and_nvtx_only_and_ends_with_the_command():
    argv = profile_argv("nsys", ["python", "app.py", "--lr", "1"], output=Path("out/trace"))
    assert argv == ["nsys", "profile", *DEFAULT_FLAGS, *TAIL, "--", "python", "app.py", "--lr", "1"]


@pytest.mark.parametrize(
    ("options", "changed"),
    [
        (ProfileOptions(trace="cuda,nvtx,osrt"), "--trace=cuda,nvtx,osrt"),
        (ProfileOptions(sample="process-tree"), "--sample=process-tree"),
        (ProfileOptions(cpuctxsw="process-tree"), "--cpuctxsw=process-tree"),
        (ProfileOptions(cuda_graph_trace="graph"), "--cuda-graph-trace=graph"),
    ],
)
def test_each_tracing_flag_is_overridable(options, changed):
    argv = profile_argv("nsys", ["app"], output=Path("out/trace"), options=options)
    flag = changed.split("=")[0]
    assert [a for a in argv if a.startswith(flag + "=")] == [changed]
    assert len(argv) == len(profile_argv("nsys", ["app"], output=Path("out/trace")))


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        ("all", []),
        ("cudaProfilerApi", ["--capture-range=cudaProfilerApi", "--capture-range-end=stop"]),
        (
            "nvtx:measured",
            [
                "--capture-range=nvtx",
                "--nvtx-capture=measured@*",
                "--capture-range-end=stop",
                "--env-var=NSYS_NVTX_PROFILER_REGISTER_ONLY=0",
            ],
        ),
        (
            "nvtx:measured@stagemfu",
            [
                "--capture-range=nvtx",
                "--nvtx-capture=measured@stagemfu",
                "--capture-range-end=stop",
                "--env-var=NSYS_NVTX_PROFILER_REGISTER_ONLY=0",
            ],
        ),
    ],
)
def test_capture_modes(capture, expected):
    assert capture_args(capture) == expected
    argv = profile_argv("nsys", ["app"], output=Path("out/trace"), capture=capture)
    assert argv == ["nsys", "profile", *DEFAULT_FLAGS, *expected, *TAIL, "--", "app"]


def test_an_escaped_at_sign_is_part_of_the_range_name():
    assert capture_args("nvtx:a\\@b")[1] == "--nvtx-capture=a\\@b@*"


@pytest.mark.parametrize("capture", ["nvtx:", "nvtx", "range", "cudaprofilerapi"])
def test_unknown_capture_mode_is_refused(capture):
    with pytest.raises(CollectError, match="not a capture mode"):
        capture_args(capture)


def test_extra_arguments_come_last_before_the_command_so_they_win():
    argv = profile_argv("nsys", ["app"], output=Path("o"), extra=("--trace=cuda", "--stats=true"))
    assert argv[-4:] == ["--trace=cuda", "--stats=true", "--", "app"]


def test_empty_command_is_refused():
    with pytest.raises(CollectError, match="no command"):
        profile_argv("nsys", [], output=Path("o"))


def test_export_writes_sqlite_to_the_chosen_file():
    assert nsys_mod.export_argv("nsys", Path("d/t.nsys-rep"), Path("d/t.sqlite")) == [
        "nsys",
        "export",
        "--type",
        "sqlite",
        "--force-overwrite",
        "true",
        "--output",
        "d/t.sqlite",
        "d/t.nsys-rep",
    ]


# --------------------------------------------------------------------------------------------
# Discovery


def test_explicit_path_wins_and_a_wrong_one_is_not_replaced(tmp_path, monkeypatch):
    exe = fake_executable(tmp_path / "mine" / "nsys")
    monkeypatch.setenv("NSYS", fake_executable(tmp_path / "env" / "nsys"))
    assert nsys_mod.find_nsys(exe) == exe
    assert nsys_mod.find_nsys(str(tmp_path / "missing")) is None
    with pytest.raises(CollectError, match="--nsys .*missing: no such file; install Nsight Systems"):
        nsys_mod.require_nsys(str(tmp_path / "missing"))


def test_nsys_env_var_then_path(tmp_path, monkeypatch):
    env = fake_executable(tmp_path / "env" / "nsys")
    on_path = fake_executable(tmp_path / "bin" / "nsys")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("NSYS", env)
    assert nsys_mod.find_nsys() == env
    monkeypatch.delenv("NSYS")
    assert nsys_mod.find_nsys() == on_path


def test_install_locations_newest_version_first(tmp_path, monkeypatch):
    for version in ("2024.6.2", "2025.3.1", "2025.10.1"):
        fake_executable(tmp_path / "opt" / version / "bin" / "nsys")
    toolkit = fake_executable(tmp_path / "cuda" / "nsight-systems-2023.4.4" / "bin" / "nsys")
    monkeypatch.setattr(
        nsys_mod, "INSTALL_GLOBS", (str(tmp_path / "opt/*/bin/nsys"), "{cuda}/nsight-systems-*/bin/nsys")
    )
    monkeypatch.delenv("NSYS")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    found = nsys_mod.installed_candidates(str(tmp_path / "cuda"))
    assert [Path(p).parts[-3] for p in found[:3]] == ["2025.10.1", "2025.3.1", "2024.6.2"]
    assert found[3] == toolkit
    assert nsys_mod.find_nsys() == found[0]


def test_missing_nsys_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(nsys_mod, "INSTALL_GLOBS", ())
    monkeypatch.delenv("NSYS")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CollectError, match="not found on PATH.*install Nsight Systems"):
        nsys_mod.require_nsys()


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("NVIDIA Nsight Systems version 2025.3.1.90-253135822126v0\n", "2025.3.1.90"),
        ("NVIDIA Nsight Systems version 2022.1.3.3-1c7b5f7\n", "2022.1.3.3"),
        ("command not found", None),
    ],
)
def test_version_is_parsed_from_nsys_output(text, version):
    assert nsys_mod.parse_version(text) == version


def test_version_asks_the_executable(tmp_path):
    assert nsys_mod.nsys_version(fake_executable(tmp_path / "nsys")) == "2024.6.2.225"
    assert nsys_mod.nsys_version(str(tmp_path / "missing")) is None


# --------------------------------------------------------------------------------------------
# The command line


def test_dry_run_prints_the_commands_without_running(tmp_path, monkeypatch):
    exe = fake_executable(tmp_path / "nsys")
    monkeypatch.setenv("NSYS", exe)
    out = tmp_path / "o"
    result = CliRunner().invoke(
        cli, ["collect", "--dry-run", "-d", str(out), "--capture", "nvtx:measured", "--", "python", "-c", "print(1)"]
    )
    assert result.exit_code == 0, result.output
    profile, export = result.output.splitlines()
    assert profile.startswith(f"{exe} profile --trace=cuda,nvtx ")
    assert "--nvtx-capture=measured@*" in profile and profile.endswith("-- python -c 'print(1)'")
    assert (
        export == f"{exe} export --type sqlite --force-overwrite true --output {out}/trace.sqlite {out}/trace.nsys-rep"
    )
    assert not out.exists()


def test_command_words_after_the_first_are_not_parsed_as_our_options(tmp_path, monkeypatch):
    monkeypatch.setenv("NSYS", fake_executable(tmp_path / "nsys"))
    result = CliRunner().invoke(cli, ["collect", "--dry-run", "python", "train.py", "--trace", "x"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith(
        "--cuda-graph-trace=node --force-overwrite=true --output=stagemfu-out/trace -- python train.py --trace x"
    )


def test_collect_without_nsys_exits_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NSYS", str(tmp_path / "missing"))
    result = CliRunner().invoke(cli, ["collect", "--", "true"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "install Nsight Systems" in result.output


def test_run_dry_run_profiles_the_runner_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("NSYS", fake_executable(tmp_path / "nsys"))
    override = tmp_path / "small.json"
    override.write_text("{}")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["run", "deepseek-ocr2", "--config", "small.json", "--mode", "gundam", "--crops", "3", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    profile = result.output.splitlines()[0]
    assert " -m stagemfu.collect.runner deepseek-ocr2 --mode gundam " in profile
    assert f"--config {override}" in profile and f"--out-dir {tmp_path}/stagemfu-out" in profile


# --------------------------------------------------------------------------------------------
# Runner options: one definition, parsed back by the runner


def parse_runner_args(args: list[str]) -> RunnerOptions:
    import click

    @click.command()
    @runner_options
    def probe(**params):
        return options_from_params(params)

    return probe.main(args, standalone_mode=False)


def test_runner_argv_parses_back_to_the_same_options(tmp_path):
    options = RunnerOptions(
        model="deepseek-ocr",
        config=tmp_path / "c.json",
        inputs=Inputs(mode="gundam", image_size=(1700, 2200), crops=4, text_tokens=9, new_tokens=5, batch=2),
        attn="eager",
        repeat=3,
        sync=True,
        image=tmp_path / "page.png",
        weights=tmp_path / "ckpt",
        device="cuda:1",
    )
    assert parse_runner_args(options.argv()) == options
    assert parse_runner_args(RunnerOptions(model="deepseek-ocr2").argv()) == RunnerOptions(model="deepseek-ocr2")


def test_runner_command_is_this_python_running_the_runner_module(tmp_path):
    command = runner_command(RunnerOptions(model="deepseek-ocr2"), out_dir=tmp_path)
    assert command[1:4] == ["-m", "stagemfu.collect.runner", "deepseek-ocr2"]
    assert command[-2:] == ["--out-dir", str(tmp_path)]


@pytest.mark.parametrize("bad", ["1700", "x2200", "0x10", "ax b"])
def test_image_size_must_be_width_x_height(bad):
    import click

    with pytest.raises(click.BadParameter):
        parse_runner_args(["deepseek-ocr2", "--image-size", bad])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["deepseek-ocr2", "--mode", "tiny"], ["mode 'tiny'", "base, gundam"]),
        (["deepseek-ocr", "--text-tokens", "0"], ["--text-tokens 0"]),
        (["deepseek-ocr2", "--mode", "gundam", "--crops", "-3"], ["--crops -3"]),
        (["no-such-model"], ["not a preset"]),
    ],
)
def test_run_rejects_bad_model_or_inputs_before_starting_nsys(tmp_path, args, words):
    """The runner would fail inside nsys minutes later; `run` checks the shapes first."""
    exe = fake_executable(tmp_path / "nsys")
    result = CliRunner().invoke(cli, ["run", *args, "--nsys", exe, "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # no nsys command printed: nothing was planned
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and all(word in line for word in words), line
