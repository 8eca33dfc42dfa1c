"""Start-up cost stays low: ``import stagemfu`` and ``stagemfu --help`` load no heavy package, and a
command loads only what it uses (torch, plotly and pyarrow never for ``postprocess``).

Each check runs in a fresh interpreter and reads ``sys.modules`` at the end, so an import added
at the top of a module fails here instead of silently adding start-up time (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from conftest import ROOT

from stagemfu.cli import COMMANDS, cli

NEVER_AT_START = ("torch", "transformers", "fvcore", "nvtx", "plotly", "pyarrow", "dask", "distributed")
HEAVY = (*NEVER_AT_START, "polars", "numpy", "rich", "adbc_driver_manager", "importlib.metadata")


def loaded_after(code: str, tmp_path) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after running ``code``."""
    script = (
        f"import sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n"
        "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) + "except SystemExit:\n    pass\n"
        f"print(__import__('json').dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_import_stagemfu_loads_nothing_heavy(tmp_path):
    assert loaded_after("import stagemfu", tmp_path) == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []], ids=["help", "version", "bare"])
def test_stagemfu_help_loads_nothing_heavy(argv, tmp_path):
    code = f"sys.argv = ['stagemfu', *{argv!r}]\nfrom stagemfu.cli import main\nmain()"
    assert loaded_after(code, tmp_path) == []


def test_postprocess_json_loads_no_model_plotting_or_arrow_package(trace_paths, tmp_path):
    argv = ["stagemfu", "postprocess", str(trace_paths["tiny_vlm"]), "--format", "json", "-o", str(tmp_path / "o")]
    code = f"sys.argv = {argv!r}\nfrom stagemfu.cli import main\nmain()"
    loaded = loaded_after(code, tmp_path)
    assert (tmp_path / "o").is_file()
    assert not set(loaded) & set(NEVER_AT_START), loaded
    assert "rich" not in loaded  # no progress bar off a terminal, no table


def test_collect_dry_run_loads_neither_polars_nor_torch(tmp_path):
    code = "sys.argv = ['stagemfu', 'collect', '--dry-run', '--', 'true']\nfrom stagemfu.cli import main\nmain()"
    loaded = loaded_after(code, tmp_path)
    assert not {"torch", "polars", "numpy", "plotly", "pyarrow"} & set(loaded), loaded


def test_help_lists_every_command_with_its_own_first_line():
    """``COMMANDS`` repeats each command's one-line help so ``--help`` imports none: it must not drift."""
    ctx = click.Context(cli)
    for name, (_, line) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert line == command.get_short_help_str(limit=1000), name


def test_unknown_command_is_one_line_exit_2():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["nosuch"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: No such command 'nosuch'")
