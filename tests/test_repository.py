"""The repository stands alone: nothing it ships reads or points to a directory beside it, CI runs
the suite from a clone with nothing beside it, and what ``make bench`` needs is in ``bench/``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
from conftest import ROOT

from stagemfu import postprocess

# Only a fixture README may name where a recording machine's tools came from.
PROVENANCE = ("tests/fixtures/", "README.md")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def test_no_shipped_file_points_beside_the_repository():
    """No path into the directory of shared tools beside the checkout (a test may still assert that a
    text does not cite it)."""
    sibling = "../" + "shared/"  # spelled in two parts so that this file does not match itself
    found = [
        name
        for name in tracked_files()
        if not (name.startswith(PROVENANCE[0]) and name.endswith(PROVENANCE[1]))
        and (ROOT / name).is_file()
        and sibling.encode() in (ROOT / name).read_bytes()
    ]
    assert found == []


def test_ci_runs_the_suite_in_a_clone_with_nothing_beside_it(tmp_path):
    """``.ci/run`` with a stand-in ``make`` that records where it ran and what lay beside it."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record.txt"
    bin_dir.mkdir()
    make = bin_dir / "make"
    make.write_text(
        '#!/bin/sh\n{ pwd; ls -A ..; echo "args: $*"; echo "browser: $STAGEMFU_REQUIRE_BROWSER";'
        ' test -f tests/fixtures/corpus/README.md && echo "corpus: yes" || echo "corpus: no"; } > "$RECORD"\n'
    )
    make.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record)}
    env["TMPDIR"] = str(tmp_path)
    subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, check=True, capture_output=True)
    ran_in, beside, args, browser, corpus = record.read_text().splitlines()
    assert Path(ran_in).name == "stagemfu" and Path(ran_in).parent.parent == tmp_path
    assert beside == "stagemfu"  # the clone alone in its directory
    assert (args, browser, corpus) == ("args: test", "browser: 1", "corpus: yes")
    assert not Path(ran_in).exists()  # removed when the run ends


def test_bench_inflates_a_real_trace_exactly(trace_paths, tmp_path):
    """``bench/inflate_trace.py`` (what ``make bench`` runs on): N copies give N times every total."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from inflate_trace import inflate_trace
    finally:
        sys.path.remove(str(ROOT / "bench"))
    source = trace_paths["tiny_vlm"]
    before = source.read_bytes()
    inflate_trace(source, tmp_path / "x3.sqlite", 3)
    assert source.read_bytes() == before
    columns = ["instances", "gpu_instances", "span_ns", "busy_ns", "kernel_ns", "gpu_ops", "kernels"]
    one = postprocess.load(source).ranges.select("domain", "name", *columns).sort("domain", "name")
    three = postprocess.load(tmp_path / "x3.sqlite").ranges.select("domain", "name", *columns).sort("domain", "name")
    assert three.equals(one.with_columns(pl.col(c) * 3 for c in columns))
    assert launches(tmp_path / "x3.sqlite") == 3 * launches(source)


def launches(path: Path) -> int:
    """Distinct correlation ids of the kernels: each copy keeps its own launches."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (count,) = db.execute("select count(distinct correlationId) from CUPTI_ACTIVITY_KIND_KERNEL").fetchone()
    return count
