"""The cache of decompressed and exported traces: keyed by content, checked before it is used,
bounded, cleaned up after Ctrl-C or SIGTERM, and never a crash when it cannot be written."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FAKE_NSYS, FIXTURES

from stagemfu import postprocess
from stagemfu.cli import cli
from stagemfu.errors import CacheError, ExportError
from stagemfu.postprocess import cache, export

PY = sys.executable
TINY = FIXTURES / "tiny_vlm.sqlite.xz"
NAMED = FIXTURES / "named_domain.sqlite.xz"
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache per test, and no fallback note left over from another test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cache, "_noted", set())
    monkeypatch.setattr(cache, "_pending", [])
    return tmp_path / "xdg" / "stagemfu" / "exports"


def invoke(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def range_names(path: Path) -> list[str]:
    return sorted(postprocess.load(path).ranges["name"].to_list())


def sqlite_bytes(fixture: Path) -> bytes:
    return lzma.decompress(fixture.read_bytes())


def fake_report(tmp_path: Path, monkeypatch, export_of: Path | None = None) -> Path:
    """An .nsys-rep that the fake nsys exports as ``export_of`` (default: the tiny_vlm recording)."""
    monkeypatch.setenv("NSYS", str(FAKE_NSYS))
    if export_of is not None:
        monkeypatch.setenv("FAKE_NSYS_SQLITE", str(export_of))
    report = tmp_path / "run.nsys-rep"
    report.write_bytes(b"an nsys report")
    return report


# --------------------------------------------------------------------------------------------
# Keyed by content


def test_another_trace_with_the_same_name_size_and_time_is_not_served_the_old_results(tmp_path):
    # Two different real traces, padded to one size, copied to one path with one modification time.
    a, b = sqlite_bytes(TINY), sqlite_bytes(NAMED)
    size = max(len(a), len(b))
    path = tmp_path / "x.sqlite.gz"
    stamps = (1_700_000_000, 1_700_000_000)
    results = []
    for data in (a, b):
        packed = gzip.compress(data, mtime=0)
        path.write_bytes(packed + b"\0" * (size - len(packed)))  # gzip ignores trailing zeros
        os.utime(path, stamps)
        results.append(range_names(path))
    assert results[0] == range_names(FIXTURES / "tiny_vlm.sqlite.xz")
    assert results[1] == range_names(FIXTURES / "named_domain.sqlite.xz")
    assert results[0] != results[1]


def test_the_same_content_under_another_name_is_a_hit(tmp_path, own_cache):
    first, second = tmp_path / "a.sqlite.xz", tmp_path / "b.sqlite.xz"
    shutil.copy(TINY, first)
    shutil.copy(TINY, second)
    assert export.decompress_cached(first) == export.decompress_cached(second)
    assert len(cache.entries(own_cache)) == 1


def test_an_input_changed_while_it_was_read_is_not_cached(tmp_path, own_cache, monkeypatch):
    path = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, path)
    decompress = export._decompress

    def meanwhile(source: Path, target: Path) -> None:
        decompress(source, target)
        path.write_bytes(NAMED.read_bytes())  # another run copies a new trace in

    monkeypatch.setattr(export, "_decompress", meanwhile)
    with pytest.raises(CacheError, match="changed while it was being read"):
        export.decompress_cached(path)
    assert cache.entries(own_cache) == [] and cache.temporaries(own_cache) == []


def test_an_unreadable_input_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, path)

    def refused(source: Path, kind: str) -> str:  # chmod 000 does not stop root, who runs some CIs
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(cache, "content_key", refused)
    one_line_error(invoke("postprocess", path), str(path), "cannot be read (Permission denied)")


def test_a_damaged_entry_is_made_again(tmp_path):
    path = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, path)
    entry = export.decompress_cached(path)
    with open(entry, "r+b") as fh:
        fh.truncate(4096)  # a disk that filled up, a crash
    assert export.decompress_cached(path) == entry
    assert entry.stat().st_size == len(sqlite_bytes(TINY))


# --------------------------------------------------------------------------------------------
# Checked before it is cached


def test_zeros_are_refused_from_the_first_block(tmp_path, own_cache):
    # A stream whose first megabyte is zeros and whose rest is damaged: decompressing it all would
    # report the damage; stopping at the header reports what the file is.
    path = tmp_path / "bomb.sqlite.gz"
    path.write_bytes(gzip.compress(b"\0" * (4 << 20)) + b"garbage after the first member")
    with pytest.raises(ExportError, match="not an SQLite file") as err:
        export.decompress_cached(path)
    assert str(err.value).startswith(f"{path}: ")
    assert cache.entries(own_cache) == [] and cache.temporaries(own_cache) == []


def test_decompression_stops_before_the_disk_fills(tmp_path, own_cache, monkeypatch):
    path = tmp_path / "big.sqlite.bz2"
    path.write_bytes(bz2.compress(sqlite_bytes(TINY)))
    monkeypatch.setattr(export.shutil, "disk_usage", lambda _p: Usage(100 << 30, 0, export.RESERVE_BYTES + 200_000))
    with pytest.raises(ExportError, match="decompresses to more than the 0.2 MiB") as err:
        export.decompress_cached(path)
    assert "XDG_CACHE_HOME" in str(err.value)
    assert cache.entries(own_cache) == [] and cache.temporaries(own_cache) == []


def test_a_truncated_export_is_refused(tmp_path, own_cache):
    path = tmp_path / "cut.sqlite.xz"
    path.write_bytes(lzma.compress(sqlite_bytes(TINY)[:200_000]))
    with pytest.raises(ExportError, match="cut short"):
        export.decompress_cached(path)
    assert cache.entries(own_cache) == []


def test_an_sqlite_file_that_is_not_an_nsys_export_is_refused(tmp_path, own_cache):
    import sqlite3

    plain = tmp_path / "plain.sqlite"
    with sqlite3.connect(plain) as db:
        db.execute("CREATE TABLE t (x)")
    path = tmp_path / "plain.sqlite.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(ExportError, match="not an nsys export"):
        export.decompress_cached(path)
    assert cache.entries(own_cache) == []


def test_garbage_from_nsys_export_is_not_cached_and_is_retried(tmp_path, own_cache, monkeypatch):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00nsys crashed half way" * 100)
    report = fake_report(tmp_path, monkeypatch, export_of=garbage)
    with pytest.raises(ExportError, match="`nsys export` gave a file that is not an SQLite file") as err:
        postprocess.load(report)
    assert str(err.value).startswith(f"{report}: ")
    assert cache.entries(own_cache) == [] and cache.temporaries(own_cache) == []
    monkeypatch.setenv("FAKE_NSYS_SQLITE", str(TINY))  # nsys works again: the report is exported anew
    assert range_names(report) == range_names(TINY)
    assert [e.path.name.split("-", 1)[1] for e in cache.entries(own_cache)].count("run.sqlite") == 1


def test_a_report_is_exported_once(tmp_path, own_cache, monkeypatch):
    report = fake_report(tmp_path, monkeypatch)
    first = export.export_sqlite(report)
    monkeypatch.setenv("NSYS", str(tmp_path / "gone"))  # a hit needs no nsys
    assert export.export_sqlite(report) == first


def test_a_hanging_nsys_export_is_stopped_with_one_line(tmp_path, own_cache, monkeypatch):
    report = fake_report(tmp_path, monkeypatch)
    pids = tmp_path / "nsys.pids"
    monkeypatch.setenv("FAKE_NSYS_EXPORT_HANG", "1")
    monkeypatch.setenv("FAKE_NSYS_PIDFILE", str(pids))
    monkeypatch.setenv("STAGEMFU_NSYS_TIMEOUT", "1")
    line = one_line_error(invoke("postprocess", report), str(report), "did not finish within 1 s")
    assert "STAGEMFU_NSYS_TIMEOUT" in line
    assert cache.entries(own_cache) == [] and cache.temporaries(own_cache) == []
    time.sleep(0.2)
    assert not any(alive(int(pid)) for pid in pids.read_text().split()), "nsys or its helper still runs"


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf"])
def test_a_bad_nsys_timeout_is_one_line(tmp_path, monkeypatch, value):
    report = fake_report(tmp_path, monkeypatch)
    one_line_error(invoke("postprocess", report, env={"STAGEMFU_NSYS_TIMEOUT": value}), "STAGEMFU_NSYS_TIMEOUT")


# --------------------------------------------------------------------------------------------
# Where it lives


def test_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cache.configured_dir() == tmp_path / "home" / ".cache" / "stagemfu" / "exports"
    copy = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, copy)
    assert export.decompress_cached(copy).parent == tmp_path / "home" / ".cache" / "stagemfu" / "exports"
    assert not (tmp_path / "relative").exists()


def test_the_makefile_cache_in_the_checkout_is_used(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout" / ".cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(checkout))
    copy = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, copy)
    assert export.decompress_cached(copy).parent == checkout / "stagemfu" / "exports"


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_cache_falls_back_with_one_note(tmp_path, monkeypatch, where):
    if where == "file":
        blocker = tmp_path / "xdg"
        blocker.write_text("a file where the cache directory would be")
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", "/proc")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(cache.tempfile, "tempdir", None)  # re-read TMPDIR
    copy = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, copy)
    first = postprocess.read(copy)
    second = postprocess.read(copy)
    said = [n for n in first.notes if "cannot be written" in n]
    assert len(said) == 1 and str(tmp_path / "tmp" / f"stagemfu-{os.getuid()}" / "exports") in said[0]
    assert not [n for n in second.notes if "cannot be written" in n]  # said once
    result = invoke("postprocess", copy, "--format", "json")
    assert result.exit_code == 0 and "Traceback" not in result.output


def test_a_fallback_directory_of_someone_else_is_not_used(tmp_path, monkeypatch):
    blocker = tmp_path / "xdg"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(cache, "fallback_dir", lambda: tmp_path / "trap" / "exports")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "trap").symlink_to(tmp_path / "elsewhere")  # planted in a shared /tmp
    copy = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, copy)
    with pytest.raises(CacheError, match="no writable cache directory"):
        export.decompress_cached(copy)
    assert list((tmp_path / "elsewhere").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Bounded


def test_least_recently_used_entries_go_first(tmp_path, own_cache, monkeypatch):
    sources = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.sqlite.xz"
        path.write_bytes(lzma.compress(sqlite_bytes(TINY) + name.encode() * 10))  # three contents
        sources.append(path)
    size = len(sqlite_bytes(TINY)) + 10
    monkeypatch.setenv("STAGEMFU_CACHE_SIZE", str(2 * size))
    a = export.decompress_cached(sources[0])
    os.utime(a, (1, 1))
    b = export.decompress_cached(sources[1])
    os.utime(b, (2, 2))
    assert export.decompress_cached(sources[0]) == a  # a used again: b is now the oldest
    c = export.decompress_cached(sources[2])
    assert sorted(e.path for e in cache.entries(own_cache)) == sorted([a, c])


def test_a_zero_size_cache_keeps_only_the_entry_in_use(tmp_path, own_cache, monkeypatch):
    monkeypatch.setenv("STAGEMFU_CACHE_SIZE", "0")
    first, second = tmp_path / "a.sqlite.xz", tmp_path / "b.sqlite.xz"
    shutil.copy(TINY, first)
    shutil.copy(NAMED, second)
    export.decompress_cached(first)
    kept = export.decompress_cached(second)
    assert [e.path for e in cache.entries(own_cache)] == [kept]


def test_temporaries_of_killed_runs_are_removed_a_day_later(tmp_path, own_cache):
    copy = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, copy)
    export.decompress_cached(copy)
    stale, fresh = own_cache / ".stagemfu-tmp-1-dead", own_cache / ".stagemfu-tmp-2-busy"
    for temp in (stale, fresh):
        temp.mkdir()
        (temp / "entry.sqlite").write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * cache.STALE_TEMP_S,) * 2)
    cache.evict(own_cache)
    assert cache.temporaries(own_cache) == [fresh]


@pytest.mark.parametrize("value,size", [("20G", 20 << 30), ("1.5M", int(1.5 * 2**20)), ("512", 512), ("2gib", 2 << 30)])
def test_cache_size_setting(monkeypatch, value, size):
    monkeypatch.setenv("STAGEMFU_CACHE_SIZE", value)
    assert cache.size_limit() == size


def test_a_bad_cache_size_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEMFU_CACHE_SIZE", "lots")
    copy = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, copy)
    one_line_error(invoke("postprocess", copy), "STAGEMFU_CACHE_SIZE='lots'")


# --------------------------------------------------------------------------------------------
# stagemfu cache


def test_cache_info_and_clear(tmp_path, own_cache):
    copy = tmp_path / "t.sqlite.xz"
    shutil.copy(TINY, copy)
    entry = export.decompress_cached(copy)
    text = invoke("cache", "info")
    assert text.exit_code == 0
    assert (
        f"location  {own_cache}" in text.stdout and entry.name in text.stdout and "entries   1, 0.9 MiB" in text.stdout
    )
    doc = json.loads(invoke("cache", "info", "--format", "json").stdout)
    assert doc["schema"] == "stagemfu.cache/1" and doc["bytes"] == entry.stat().st_size
    assert doc["entries"][0]["name"] == entry.name and doc["limit_bytes"] == cache.DEFAULT_SIZE
    cleared = invoke("cache", "clear")
    assert cleared.exit_code == 0 and cleared.stdout.startswith("removed 1 entries")
    assert cache.entries(own_cache) == [] and copy.read_bytes() == TINY.read_bytes()


def test_cache_info_names_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc")
    result = invoke("cache", "info")
    assert result.exit_code == 0 and "instead of /proc/stagemfu/exports" in result.stdout


def test_cache_info_escapes_hostile_entry_names(own_cache):
    own_cache.mkdir(parents=True)
    (own_cache / "evil\x1b[2J.sqlite").write_bytes(b"x")
    result = invoke("cache", "info")
    assert "\x1b" not in result.stdout and "evil\\x1b[2J.sqlite" in result.stdout


# --------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


# The command run by the signal tests: stagemfu with decompression slowed to a block per 0.1 s.
SLOW_STAGEMFU = """
import sys, time
from stagemfu.postprocess import export
read = export._read
export._read = lambda *args: (time.sleep(0.1), read(*args))[1]
from stagemfu.cli import main
main()
"""


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed and not yet reaped, has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_decompression_leaves_no_temporary(tmp_path, own_cache, signum):
    path = tmp_path / "slow.sqlite.gz"
    path.write_bytes(gzip.compress(sqlite_bytes(TINY) + b"\0" * (64 << 20), compresslevel=1))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    argv = [PY, "-c", SLOW_STAGEMFU, "postprocess", str(path)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(size for _, size in written(own_cache)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert written(own_cache), "decompression never started"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (1 if signum == signal.SIGINT else 128 + signal.SIGTERM), err
    assert "Traceback" not in err
    assert written(own_cache) == []


def written(directory: Path) -> list[tuple[Path, int]]:
    """Every file under ``directory`` with its size (one vanishing while listed is left out)."""
    found = []
    for path in directory.rglob("*") if directory.is_dir() else ():
        with contextlib.suppress(OSError):
            if path.is_file():
                found.append((path, path.stat().st_size))
    return found


def test_sigterm_during_nsys_export_stops_nsys_and_leaves_no_temporary(tmp_path, own_cache, monkeypatch):
    report = fake_report(tmp_path, monkeypatch)
    pids = tmp_path / "nsys.pids"
    env = dict(os.environ, FAKE_NSYS_EXPORT_HANG="1", FAKE_NSYS_PIDFILE=str(pids))
    argv = [PY, "-m", "stagemfu", "postprocess", str(report)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pids.exists(), "the export never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert cache.temporaries(own_cache) == []
    time.sleep(0.2)
    assert not any(alive(int(pid)) for pid in pids.read_text().split()), "nsys or its helper still runs"
