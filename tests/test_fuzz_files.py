"""Fuzzing the file boundary: damaged and disguised inputs, outputs that alias inputs.

Every case must end in a result (exit 0) or one ``Error:`` line with exit 2, never a traceback;
the inputs keep their bytes, and the cache keeps no temporary file. The damage: compression
streams cut or with flipped bits, SQLite files cut short, flipped header bytes, flipped bytes
in the pages of a plain export, random bytes, a valid header followed by zeros (a small bomb),
JSON, empty files; each under every suffix (.xz, .gz, .bz2, plain).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stagemfu.cli import cli
from stagemfu.postprocess import cache

RAW = lzma.decompress((FIXTURES / "named_domain.sqlite.xz").read_bytes())  # a small real export
CODECS = {".xz": lzma.compress, ".gz": gzip.compress, ".bz2": bz2.compress, "": bytes}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(args: list[object]) -> tuple[int, str]:
    """Exit status and stderr of one CLI run; anything but a result or one Error line fails the test."""
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args])
    except BaseException as err:  # a Rust panic is a BaseException: it would escape the runner
        pytest.fail(f"{args}: escaped {type(err).__name__}: {err}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: traceback") from result.exception
    lines = result.stderr.splitlines()
    assert result.exit_code == 0 or (result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ")), (
        args,
        result.exit_code,
        result.stderr[-2000:],
    )
    return result.exit_code, result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@st.composite
def damaged_inputs(draw) -> tuple[str, str, bytes]:
    """What was done, a suffix, and the bytes of a damaged, disguised or bomb-like version of a real export."""
    suffix = draw(st.sampled_from(sorted(CODECS)))
    pack = CODECS[suffix]
    ways = ["cut-stream", "flip-stream", "cut-sqlite", "random", "flip-header", "zeros", "json", "empty"]
    how = draw(st.sampled_from(ways))  # flip-stream of a plain export damages its pages
    if how == "cut-stream":
        packed = pack(RAW)
        data = packed[: draw(st.integers(0, len(packed) - 1))]
    elif how == "flip-stream":
        damaged = bytearray(pack(RAW))
        for at in draw(st.lists(st.integers(0, len(damaged) - 1), min_size=1, max_size=8)):
            damaged[at] ^= 1 << draw(st.integers(0, 7))
        data = bytes(damaged)
    elif how == "cut-sqlite":
        data = pack(RAW[: draw(st.integers(0, len(RAW) - 1))])
    elif how == "random":
        data = draw(st.binary(max_size=4096))
    elif how == "flip-header":
        damaged = bytearray(RAW)
        for at in draw(st.lists(st.integers(0, 99), min_size=1, max_size=4)):
            damaged[at] = draw(st.integers(0, 255))
        data = pack(bytes(damaged))
    elif how == "zeros":  # a valid header, then a run of zeros: a small decompression bomb
        data = pack(RAW[:100] + b"\0" * draw(st.integers(1, 2 << 20)))
    elif how == "json":
        data = pack(json.dumps({"traceEvents": draw(st.lists(st.integers(), max_size=5))}).encode())
    else:
        data = pack(b"")
    return how, suffix, data


@given(case=damaged_inputs())
@FUZZ
def test_damaged_input_gives_a_result_or_one_error_line(case):
    how, suffix, data = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trace = root / f"fuzz.sqlite{suffix}"
        trace.write_bytes(data)
        before = digest(trace)
        status, _ = outcome(["postprocess", trace, "--format", "json", "-o", root / "out.json"])
        event(f"{how}{suffix or ' plain'}: exit {status}")
        assert digest(trace) == before
        assert (root / "out.json").exists() == (status == 0)
        assert sorted(p.name for p in root.iterdir()) == sorted({trace.name, *(["out.json"] if status == 0 else [])})
        assert cache.temporaries(cache.cache_dir()) == []


# --------------------------------------------------------------------------------------------
# Outputs that alias an input


ALIASES = ["same", "relative", "dots", "symlink", "symlink-chain", "hardlink", "symlinked-dir"]


def alias(kind: str, target: Path, where: Path) -> Path:
    """Another spelling of ``target``: itself, relative, with ./ and //, links to it or to its directory."""
    if kind == "same":
        return target
    if kind == "relative":
        return Path(os.path.relpath(target))
    if kind == "dots":
        return Path(f"{target.parent}/.//./{target.name}")
    link = where / f"{kind}-{target.name}"
    if kind == "symlink":
        link.symlink_to(target)
    elif kind == "symlink-chain":
        middle = where / f"middle-{target.name}"
        middle.symlink_to(target)
        link.symlink_to(middle)
    elif kind == "hardlink":
        os.link(target, link)
    else:
        (where / "dir-link").symlink_to(target.parent, target_is_directory=True)
        link = where / "dir-link" / target.name
    return link


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per input role: a plain and a compressed trace, a FLOPs mapping, a category table."""
    root = tmp_path_factory.mktemp("inputs")
    files = {
        "trace": root / "run.sqlite",
        "packed": root / "packed.sqlite.xz",
        "flops": root / "flops.json",
        "categories": root / "cats.csv",
    }
    files["trace"].write_bytes(RAW)
    files["packed"].write_bytes(lzma.compress(RAW))
    files["flops"].write_text('{"outer": 1000000}\n')
    files["categories"].write_text("category,pattern\nmine,gemm\n")
    return files


VICTIMS = {"postprocess": ("trace", "categories"), "report": ("trace", "flops")}
OPTIONS = {"postprocess": ("-o",), "report": ("-o", "--html")}


@given(data=st.data())
@FUZZ
def test_an_output_aliasing_an_input_is_refused_and_inputs_are_kept(inputs, data):
    command = data.draw(st.sampled_from(sorted(VICTIMS)), label="command")
    trace = inputs[data.draw(st.sampled_from(["trace", "packed"]), label="trace")]
    victim = data.draw(st.sampled_from(VICTIMS[command]), label="victim")
    kind = data.draw(st.sampled_from(ALIASES), label="alias")
    option = data.draw(st.sampled_from(OPTIONS[command]), label="option")
    fmt = data.draw(st.sampled_from(["table", "json", "md"]), label="format")
    extra = ["--categories", inputs["categories"]] if command == "postprocess" else ["--flops", inputs["flops"]]
    before = {role: digest(path) for role, path in inputs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        out = alias(kind, trace if victim == "trace" else inputs[victim], Path(tmp))
        status, stderr = outcome([command, trace, *extra, "--format", fmt, option, out])
    assert status == 2 and "inputs" in stderr, stderr
    assert {role: digest(path) for role, path in inputs.items()} == before


@given(
    name=st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0"), min_size=1, max_size=60
    ).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)
)
@FUZZ
def test_any_new_output_name_is_written_whole(inputs, name):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        status, _ = outcome(["postprocess", inputs["trace"], "--format", "json", "-o", out])
        assert status == 0
        assert json.loads(out.read_text())["schema"] == "stagemfu.postprocess/1"
        assert os.listdir(tmp) == [name]
