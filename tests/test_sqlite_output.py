"""``--format sqlite -o FILE``: every table of postprocess and report as typed SQLite tables that
sqlite-utils and Datasette read, written whole or not at all, never over an input."""

from __future__ import annotations

import sqlite3

import polars as pl
import pytest
import sqlite_utils
from click.testing import CliRunner

from stagemfu import postprocess
from stagemfu.cli import cli
from stagemfu.report.render.postprocess_data import TABLES


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_postprocess_writes_every_table_typed(trace_paths, tmp_path):
    db_path = tmp_path / "results.db"
    result = invoke("postprocess", trace_paths["tiny_vlm"], "--format", "sqlite", "-o", db_path)
    assert result.exit_code == 0, result.output
    db = sqlite_utils.Database(db_path)
    assert {*TABLES, "gpus", "unattributed", "totals", "stagemfu"} <= set(db.table_names())
    st = postprocess.load(trace_paths["tiny_vlm"])
    ranges = db["ranges"]
    assert ranges.count == st.ranges.height
    types = {c.name: c.type for c in ranges.columns}
    assert (types["name"], types["busy_ns"], types["idle_share"]) == ("TEXT", "INTEGER", "REAL")
    stored = pl.DataFrame(list(ranges.rows), schema=st.ranges.schema, orient="row")
    assert stored.equals(st.ranges)  # every number exact
    assert db["instances"].count == st.instances.height
    meta = dict(db.execute("select key, value from stagemfu").fetchall())
    assert meta["schema"] == "stagemfu.postprocess/1"


def test_report_writes_its_tables_and_one_row_tables(toy, analysis, tmp_path):
    db_path = tmp_path / "report.db"
    assert invoke("report", toy, "--flops", analysis, "--format", "sqlite", "-o", db_path).exit_code == 0
    with sqlite3.connect(db_path) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
        assert {"stages", "decode_steps", "timeline", "kernels", "categories", "flops", "model", "latency"} <= tables
        prefill = db.execute("select flops, kernel_ns, mfu_kernel from stages where stage = 'prefill'").fetchone()
        assert prefill[:2] == (900_000, 1400) and prefill[2] == pytest.approx(900_000 / 1400 / 989.4e3)
        assert db.execute("select tflops, source from peak").fetchone() == (989.4, "datasheet")


def test_sqlite_needs_an_output_file_and_never_replaces_an_input(toy, analysis, tmp_path):
    result = invoke("postprocess", toy, "--format", "sqlite")
    assert result.exit_code == 2 and "give -o FILE.db" in result.stderr
    before = toy.read_bytes()
    result = invoke("report", toy, "--flops", analysis, "--format", "sqlite", "-o", toy)
    assert result.exit_code == 2 and "inputs" in result.stderr
    assert toy.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_an_existing_database_is_replaced_not_added_to(toy, tmp_path):
    db_path = tmp_path / "r.db"
    for _ in range(2):
        assert invoke("postprocess", toy, "--format", "sqlite", "-o", db_path).exit_code == 0
    assert sqlite_utils.Database(db_path)["ranges"].count == postprocess.load(toy).ranges.height
