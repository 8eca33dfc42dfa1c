"""Recorded traces that ship with stagemfu: scrubbed of the capture host's environment, and the
embedded default trace (``src/stagemfu/data/*.sqlite.xz``, recorded by ``stagemfu run``) holds the
documented stages.

A trace is scrubbed as ``tests/fixtures/README.md`` says: the host's name, environment, CPU, machine
id and install directory blanked in TARGET_INFO_SYSTEM_ENV, no environment rows in
META_DATA_CAPTURE, no ``NAME=value`` strings in StringIds, and the exporting host, user and paths
blanked in the export metadata.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from conftest import EMBEDDED_TRACE, FIXTURES

from stagemfu.postprocess.export import decompress_cached

# Every export in the repository: the fixtures (traces/, calibration/, corpus/) and the embedded trace.
SHIPPED = sorted(FIXTURES.parent.glob("**/*.sqlite.xz")) + [EMBEDDED_TRACE]
HOST_FIELDS = ("Hostname", "DeviceEnvironment", "SystemUID", "CpuInfo", "TargetInstallDir")
ENV_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=|PATH=/")
# Who exported the trace, and where: META_DATA_EXPORT (EXPORT_META_DATA in 2022 exports).
EXPORT_HOST = "name in ('EXPORT_HOST', 'EXPORT_USER') or name like 'EXPORT%PATH%'"
# `stagemfu run deepseek-ocr2` ranges (docs/collect.md); `warmup` is absent under --capture nvtx:measured
OCR2_STAGES = {"measured", "prefill", "decode", "vision", "sam", "encoder", "projector"}


def environment_left(path: Path) -> list[str]:
    """What of the capture host's environment an export still holds, one entry per finding."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
        found = []
        if "TARGET_INFO_SYSTEM_ENV" in tables:
            marks = ",".join("?" * len(HOST_FIELDS))
            sql = f"select name from TARGET_INFO_SYSTEM_ENV where name in ({marks}) and value != ''"
            found += [f"TARGET_INFO_SYSTEM_ENV.{name}" for (name,) in db.execute(sql, HOST_FIELDS)]
        if "META_DATA_CAPTURE" in tables:
            sql = "select name from META_DATA_CAPTURE where name like '%ENVIRONMENT%' or value like '%=%'"
            found += [f"META_DATA_CAPTURE.{name}" for (name,) in db.execute(sql)]
        for table in sorted(tables & {"META_DATA_EXPORT", "EXPORT_META_DATA"}):
            sql = f"select name from {table} where ({EXPORT_HOST}) and value != ''"
            found += [f"{table}.{name}" for (name,) in db.execute(sql)]
        found += [
            f"StringIds: {value[:40]}"
            for (value,) in db.execute("select value from StringIds")
            if value and ENV_STRING.search(value)
        ]
    return found


@pytest.mark.parametrize("trace", SHIPPED, ids=lambda p: p.name)
def test_shipped_traces_hold_no_host_environment(trace):
    assert environment_left(decompress_cached(trace)) == []


def test_an_unscrubbed_export_is_caught(tmp_path):
    path = tmp_path / "raw.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table TARGET_INFO_SYSTEM_ENV (name text, value text)")
        db.execute("insert into TARGET_INFO_SYSTEM_ENV values ('Hostname', 'gpu-node-17'), ('OsName', 'Linux')")
        db.execute("create table META_DATA_CAPTURE (name text, value text)")
        db.execute("insert into META_DATA_CAPTURE values ('ENVIRONMENT', 'HOME=/root')")
        db.execute("create table EXPORT_META_DATA (name text, value text)")
        db.execute("insert into EXPORT_META_DATA values ('EXPORT_HOST', 'gpu-node-17'), ('EXPORT_USER', '')")
        db.execute("insert into EXPORT_META_DATA values ('EXPORT_OUTUPT_PATH', '/home/me/r.sqlite')")
        db.execute("create table StringIds (id integer, value text)")
        db.execute("insert into StringIds values (1, 'HF_TOKEN=hf_abc'), (2, 'prefill'), (3, 'x\nPATH=/usr/bin')")
    assert environment_left(path) == [
        "TARGET_INFO_SYSTEM_ENV.Hostname",
        "META_DATA_CAPTURE.ENVIRONMENT",
        "EXPORT_META_DATA.EXPORT_HOST",
        "EXPORT_META_DATA.EXPORT_OUTUPT_PATH",
        "StringIds: HF_TOKEN=hf_abc",
        "StringIds: x\nPATH=/usr/bin",
    ]


def test_embedded_trace_postprocesses_to_the_documented_stages():
    from stagemfu import postprocess

    st = postprocess.load(EMBEDDED_TRACE, within="measured")
    ranges = st.ranges.filter(st.ranges["domain"] == "stagemfu")
    assert set(ranges["name"].to_list()) >= OCR2_STAGES
    paths = set(st.paths["path"].to_list())
    assert {"measured/prefill/vision/sam", "measured/prefill/vision/encoder", "measured/decode"} <= paths
    assert st.totals["gpu_ops"].sum() > 0 and ranges["busy_ns"].min() > 0
