"""Adversarial sweep over the command line: hostile inputs and flags through every command.

    python tests/sweep_cli.py WORKDIR [--quick]      (make sweep)

Each case runs ``python -m stagemfu`` in a fresh process and is judged by the promise the tool
makes about bad input: a result, or exit 2 with exactly one ``Error:`` line; never a traceback or
another exit status; no input file changed (SHA-256 before and after); no hang (a time limit per
case); and where a hostile name reaches an output, it is data there (no raw markup in HTML or
Markdown, no formula cell in CSV, no terminal escape in text). The groups: A hostile names in
every command and format, B numeric and pattern flags, C FLOPs files, D outputs that would
destroy an input, E damaged, truncated and non-trace files, F model configs, G collect names,
H documents beside a trace and compare inputs. The pytest suite holds the focused tests; this
sweep is the wide net, slower (about 10 minutes on 2 cores), and writes WORKDIR/summary.json with
counts tried/clean per group and every failing case.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]
from conftest import launch, make_trace  # noqa: E402
from report_traces import ANALYSIS  # noqa: E402

PY = sys.executable
WORK = Path(sys.argv[1]).resolve()
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "XDG_CACHE_HOME": str(WORK / "cache"), "COLUMNS": "100"}
HOSTILE = [
    "<script>alert(1)</script>",
    "\"'quoted' & <b>bold</b>",
    "line1\nline2\r\nline3",
    "\x1b[2J\x1b[31mred\x1b[0m",
    '=HYPERLINK("http://x","y")',
    "+1+1",
    "-2-2",
    "@SUM(A1)",
    "\u202eevil",
    "x" * 100_000,
    "tab\there|pipe|`tick`",
    "[bold]rich[/bold] {brace} %s",
    "😀 émoji",
    "</td></tr><img src=x onerror=alert(1)>",
]
results: list[dict] = []


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def run(
    case: str,
    argv: list[str],
    inputs: list[Path],
    *,
    expect_ok: bool | None = None,
    out: Path | None = None,
    check=None,
    timeout: float = 90,
) -> None:
    before = {p: sha(p) for p in inputs}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([PY, "-m", "stagemfu", *argv], capture_output=True, timeout=timeout, env=ENV, cwd=WORK)
        rc, so, se = r.returncode, r.stdout, r.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        rc, so, se = None, b"", "TIMEOUT"
    dt = time.perf_counter() - t0
    problems = []
    if rc is None:
        problems.append("hang")
    elif "Traceback" in se or ("Exception" in se and "Error:" not in se):
        problems.append("traceback")
    elif rc not in (0, 2):
        problems.append(f"exit {rc}")
    if rc == 2:
        errs = [ln for ln in se.splitlines() if ln.startswith("Error:")]
        if len(errs) != 1:
            problems.append(f"{len(errs)} Error lines")
    if expect_ok is True and rc != 0:
        problems.append(f"expected success, got {rc}: {se.strip()[-200:]}")
    if expect_ok is False and rc == 0:
        problems.append("accepted bad input")
    for p, h in before.items():
        if sha(p) != h:
            problems.append(f"input changed: {p.name}")
    if rc == 0 and check is not None:
        body = out.read_bytes() if out is not None and out.is_file() else so
        problems += check(body)
    results.append({"case": case, "rc": rc, "seconds": round(dt, 2), "problems": problems, "stderr": se.strip()[-300:]})
    mark = "ok " if not problems else "BAD"
    print(f"{mark} {case} rc={rc} {dt:.1f}s {problems} {se.strip()[-120:]!r}", flush=True)


# --- output checks: hostile strings are data ------------------------------------------------------


def check_html(body: bytes) -> list[str]:
    text = body.decode("utf-8", "replace")
    bad = [s for s in ("<script>alert(1)</script>", "<img src=x onerror", "<b>bold</b>") if s in text]
    return [f"raw in HTML: {b!r}" for b in bad]


def check_csv(body: bytes) -> list[str]:
    rows = list(csv.reader(io.StringIO(body.decode("utf-8", "replace"))))
    bad = [c for row in rows for c in row if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not _number(c))]
    return [f"formula cell in CSV: {bad[0][:40]!r}"] if bad else []


def _number(c: str) -> bool:
    try:
        float(c)
        return True
    except ValueError:
        return False


def check_text(body: bytes) -> list[str]:
    return ["raw terminal escape in output"] if b"\x1b[2J" in body or b"\x1b[31m" in body else []


def check_md(body: bytes) -> list[str]:
    text = body.decode("utf-8", "replace")
    return check_text(body) + (["raw HTML in Markdown"] if "<script>alert(1)</script>" in text else [])


def check_json(body: bytes) -> list[str]:
    try:
        json.loads(body)
    except ValueError as err:
        return [f"invalid JSON: {err}"]
    return []


CHECKS = {"table": check_text, "json": check_json, "csv": check_csv, "md": check_md, "html": check_html}


# --- inputs ---------------------------------------------------------------------------------------


def hostile_trace(d: Path, name: str, i: int) -> Path:
    pairs = [
        launch(1, (300, 310), (1000, 1400), name=name),
        launch(2, (1500, 1510), (1600, 2600), name="gemm"),
        launch(3, (3100, 3110), (3200, 3400), name=name + "_2"),
    ]
    gpu = {"id": 0, "name": name[:200] or "x", "smCount": 132, "clockRate": 1_980_000_000}
    return make_trace(
        d,
        calls=[c for c, _ in pairs],
        kernels=[k for _, k in pairs],
        gpus=[gpu],
        name=f"h{i}.sqlite",
        ranges=[
            {"start": 0, "end": 10000, "text": "measured"},
            {"start": 100, "end": 3000, "text": name},
            {"start": 200, "end": 1000, "text": "prefill"},
            {"start": 3000, "end": 5000, "text": "decode"},
        ],
    )


def flops_for(name: str) -> dict:
    return {"stages": {name: {"flops": 1.0e9}, "decode": {"flops": 2.0e6}}}


def main() -> None:
    quick = "--quick" in sys.argv
    marker = WORK / ".stagemfu-sweep"
    if WORK.exists() and any(WORK.iterdir()) and not marker.exists():
        sys.exit(f"{WORK}: not empty and not an earlier sweep's directory; give a new or empty directory")
    shutil.rmtree(WORK, ignore_errors=True)  # an earlier sweep's, marked as such
    WORK.mkdir(parents=True)
    marker.touch()
    rng = random.Random(19)
    base = ROOT / "tests/fixtures/traces/tiny_vlm.sqlite.xz"
    good = WORK / "good.sqlite"
    subprocess.run(["xz", "-dkc", str(base)], stdout=good.open("wb"), check=True)
    analysis = WORK / "analysis.json"
    analysis.write_text(json.dumps(ANALYSIS))

    # A. hostile names through every command and format
    for i, name in enumerate(HOSTILE):
        t = hostile_trace(WORK, name, i)
        fl = WORK / f"f{i}.json"
        fl.write_text(json.dumps(flops_for(name)))
        for fmt in ("table", "json", "csv", "md"):
            o = WORK / f"pp{i}.{fmt}"
            run(
                f"A postprocess hostile#{i} {fmt}",
                ["postprocess", str(t), "--format", fmt, "-o", str(o), "--all"],
                [t],
                expect_ok=True,
                out=o,
                check=CHECKS[fmt],
            )
        report = ["report", str(t), "--flops", str(fl), "--peak-tflops", "989"]
        for fmt in ("table", "json", "csv", "md", "html"):
            o = WORK / f"rp{i}.{fmt}"
            run(
                f"A report hostile#{i} {fmt}",
                [*report, "--within", "measured", "--format", fmt, "-o", str(o)],
                [t, fl],
                expect_ok=True,
                out=o,
                check=CHECKS[fmt],
            )
        o = WORK / f"rp{i}.db"
        run(f"A report hostile#{i} sqlite", [*report, "--format", "sqlite", "-o", str(o)], [t, fl], expect_ok=True)
        j = WORK / f"rj{i}.json"  # the report compare reads, written once
        subprocess.run([PY, "-m", "stagemfu", *report, "--format", "json", "-o", str(j)], env=ENV, capture_output=True)
        for fmt in ("table", "json", "md", "html"):
            o = WORK / f"cmp{i}.{fmt}"
            run(
                f"A compare hostile#{i} {fmt}",
                ["compare", str(j), str(j), "--format", fmt, "-o", str(o)],
                [j],
                expect_ok=True,
                out=o,
                check=CHECKS[fmt],
            )

    # B. numeric flags
    for v in ["nan", "inf", "-inf", "-1", "0", "1e-300", "1e308", "abc", "", "1e400"]:
        run(f"B --peak-tflops {v!r}", ["report", str(good), "--flops", str(analysis), "--peak-tflops", v], [good])
        run(
            f"B --peak-bandwidth {v!r}",
            ["report", str(good), "--flops", str(analysis), "--peak-tflops", "989", "--peak-bandwidth", v],
            [good],
        )
    for v in ["-1", "0", "99999999999999999999999", "abc", "1.5", "auto", "1"]:
        run(f"B --chunk-ops {v!r}", ["postprocess", str(good), "--chunk-ops", v, "--format", "json"], [good])
    for v in ["-1", "0", "99999999999999999999", "x"]:
        run(f"B --top {v!r}", ["postprocess", str(good), "--top", v], [good])
        run(f"B --top-kernels {v!r}", ["postprocess", str(good), "--top-kernels", v, "--format", "json"], [good])
    for opt in ("--text-tokens", "--new-tokens", "--batch", "--crops"):
        for v in ["-1", "0", "1e15", "1000000000000000", "x"]:
            run(
                f"B analyze {opt} {v!r}", ["analyze", "deepseek-ocr2", opt, v, "--counters", "analytic"], [], timeout=60
            )
    for v in ["A100", "h100", "H200", "nonexistent-gpu", "", "<script>", "\x1b[2J"]:
        run(f"B --gpu {v!r}", ["report", str(good), "--flops", str(analysis), "--gpu", v], [good])
        run(f"B analyze --gpu {v!r}", ["analyze", "deepseek-ocr2", "--gpu", v], [], timeout=60)
    sweeps = ["batch=1,x", "batch=0", "batch=1e3", "batch=" + "9" * 400, "batch=" + "1," * 3000, "=1", "batch==1",
              "mode=<script>", "crops=\x1b[2J", *(f"text_tokens={h}" for h in HOSTILE[:6])]  # fmt: skip
    for v in sweeps:
        for fmt in ("table", "json", "html"):
            out = ["-o", str(WORK / "what-if.html")] if fmt == "html" else []
            args = ["analyze", "deepseek-ocr2", "--sweep", v, "--gpu", "H100", "--format", fmt, *out]
            run(f"B analyze --sweep {v[:30]!r} {fmt}", args, [], timeout=60)
    cats = WORK / "cats.csv"
    cats.write_bytes(os.urandom(4096))
    run("B binary --categories", ["postprocess", str(good), "--categories", str(cats)], [good, cats])
    for v in ["not a url", "tcp://" + "h" * 5000 + ":1", "tcp://x:99999", "tcp://127.0.0.1:1"]:
        run(f"B --scheduler {v[:30]!r}", ["postprocess", str(good), str(good), "--scheduler", v], [good], timeout=60)
    for pat in ["[", "**", "*", "\x01", "a" * 10000]:
        run(f"B --range {pat[:20]!r}", ["postprocess", str(good), "--range", pat], [good])
        run(f"B --within {pat[:20]!r}", ["postprocess", str(good), "--within", pat], [good])

    # C. FLOPs files
    bad_flops = {
        "infinity": '{"stages": {"prefill": {"flops": Infinity}}}',
        "nan": '{"stages": {"prefill": {"flops": NaN}}}',
        "1e30": '{"stages": {"prefill": {"flops": 1e30}}}',
        "negative": '{"stages": {"prefill": {"flops": -5}}}',
        "string": '{"stages": {"prefill": {"flops": "many"}}}',
        "list": '{"stages": {"prefill": [1, 2]}}',
        "deep": "[" * 100_000 + "]" * 100_000,
        "empty": "",
        "array": "[]",
        "schema only": '{"schema": "stagemfu.analyze/1"}',
        "inputs wrong": json.dumps({**ANALYSIS, "inputs": "x"}),
        "batch wrong": json.dumps({**ANALYSIS, "inputs": {**ANALYSIS["inputs"], "batch": "two"}}),
        "notes wrong": json.dumps({**ANALYSIS, "notes": 5}),
        "stages null": json.dumps({**ANALYSIS, "stages": None}),
        "huge int": '{"stages": {"prefill": {"flops": 123456789012345678901234567890}}}',
        "bool": '{"stages": {"prefill": {"flops": true}}}',
    }
    for k, text in bad_flops.items():
        f = WORK / f"bad_{k.replace(' ', '_')}.json"
        f.write_text(text)
        run(f"C --flops {k}", ["report", str(good), "--flops", str(f), "--peak-tflops", "989"], [good, f])
    f = WORK / "bad_utf8.json"
    f.write_bytes(b'{"stages": {"pre\xff\xfe": {"flops": 1}}}')
    run("C --flops non-UTF-8", ["report", str(good), "--flops", str(f), "--peak-tflops", "989"], [good, f])

    # D. outputs that would destroy inputs
    xz = WORK / "good.sqlite.xz"
    shutil.copy(base, xz)
    link = WORK / "link.sqlite"
    link.symlink_to(good)
    hard = WORK / "hard.sqlite"
    os.link(good, hard)
    for out in (good, link, hard):
        run(f"D postprocess -o {out.name}", ["postprocess", str(good), "-o", str(out)], [good], expect_ok=False)
    run(
        "D report --html input.xz",
        ["report", str(xz), "--flops", str(analysis), "--html", str(xz)],
        [xz],
        expect_ok=False,
    )
    run(
        "D report -o flops file",
        ["report", str(good), "--flops", str(analysis), "-o", str(analysis)],
        [good, analysis],
        expect_ok=False,
    )
    run("D -o /dev/full", ["postprocess", str(good), "-o", "/dev/full"], [good], expect_ok=False)
    run("D -o missing dir", ["postprocess", str(good), "-o", str(WORK / "no/such/dir/x.json")], [good])
    run("D -o a directory", ["postprocess", str(good), "-o", str(WORK)], [good], expect_ok=False)

    # E. damaged traces
    data = good.read_bytes()
    page = 4096
    n_damage = 12 if quick else 60
    for k in range(n_damage):
        b = bytearray(data)
        p = rng.randrange(len(b) // page)
        for _ in range(rng.choice([1, 8, 64, page])):
            b[p * page + rng.randrange(page)] = rng.randrange(256)
        f = WORK / f"dmg{k}.sqlite"
        f.write_bytes(bytes(b))
        run(f"E damaged page {p} #{k}", ["postprocess", str(f), "--format", "json", "-o", str(WORK / "d.json")], [f])
    for k in range(6 if quick else 20):
        f = WORK / f"trunc{k}.sqlite"
        f.write_bytes(data[: rng.randrange(len(data))])
        run(f"E truncated #{k}", ["postprocess", str(f)], [f])
    kineto = ROOT / "tests/fixtures/traces/llama_train.pt.trace.json.gz"
    kdata = gzip.decompress(kineto.read_bytes())
    for k in range(4 if quick else 20):
        b = bytearray(kdata)
        for _ in range(rng.choice([1, 8, 64, 512])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        f = WORK / f"kdmg{k}.pt.trace.json"
        f.write_bytes(bytes(b))
        run(f"E damaged Kineto #{k}", ["postprocess", str(f), "--format", "json", "-o", str(WORK / "d.json")], [f])
    for k in range(3 if quick else 10):
        f = WORK / f"ktrunc{k}.pt.trace.json.gz"
        f.write_bytes(kineto.read_bytes()[: rng.randrange(1, kineto.stat().st_size)])
        run(f"E truncated Kineto gzip #{k}", ["postprocess", str(f)], [f], expect_ok=False)
    for label, blob in {
        "empty": b"",
        "text": b"hello world\n" * 100,
        "json": b'{"a": 1}',
        "zeros": bytes(10_000),
        "sqlite header only": b"SQLite format 3\x00" + bytes(100),
    }.items():
        f = WORK / f"{label.replace(' ', '_')}.sqlite"
        f.write_bytes(blob)
        run(f"E {label}", ["postprocess", str(f)], [f], expect_ok=False)
    bomb = WORK / "bomb.sqlite.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as g:
        g.write(bytes(200 << 20))
    run("E gzip bomb of zeros", ["postprocess", str(bomb)], [bomb], expect_ok=False)
    txz = WORK / "trunc.sqlite.xz"
    txz.write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    run("E truncated xz", ["postprocess", str(txz)], [txz], expect_ok=False)
    fifo = WORK / "fifo.sqlite"
    os.mkfifo(fifo)
    run("E FIFO", ["postprocess", str(fifo)], [], expect_ok=False, timeout=30)
    run("E directory of nothing", ["postprocess", str(WORK / "cache")], [])
    run("E missing file", ["postprocess", str(WORK / "nope.sqlite")], [], expect_ok=False)

    # F. analyzer configs
    cfg = ROOT / "tests/fixtures/configs/llama-3.2-1b/config.json"
    base_cfg = json.loads(cfg.read_text())
    mutations = {
        "hidden_size": [-2048, 0, True, "2048", 2047.5, None],
        "num_hidden_layers": [-1, 0, 10**12],
        "num_attention_heads": [0, -4, 7],
        "num_key_value_heads": [0, 3, 64],
        "vocab_size": [-1, 0],
        "intermediate_size": [-1, "x"],
        "head_dim": [0, -64],
    }
    for key, values in mutations.items():
        for v in values:
            c = WORK / "cfg" / f"{key}_{v!s:.10}.json".replace("/", "_")
            c.parent.mkdir(exist_ok=True)
            c.write_text(json.dumps({**base_cfg, key: v}))
            run(f"F analyze {key}={v!r}", ["analyze", str(c), "--counters", "analytic"], [c], timeout=60)
    moe = {
        "model_type": "mixtral",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
    }
    for k2, v2 in {"num_experts_per_tok": 9, "num_local_experts": 0}.items():
        c = WORK / "cfg" / f"moe_{k2}.json"
        c.write_text(json.dumps({**moe, "num_local_experts": 8, "num_experts_per_tok": 2, k2: v2}))
        run(f"F analyze mixtral {k2}={v2}", ["analyze", str(c), "--counters", "analytic"], [c], timeout=60)
    deep = WORK / "cfg" / "deep.json"
    deep.write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    run("F analyze deep config", ["analyze", str(deep)], [deep], expect_ok=False)
    nonutf = WORK / "cfg" / "nonutf.json"
    nonutf.write_bytes(b'{"model_type": "ll\xffama"}')
    run("F analyze non-UTF-8 config", ["analyze", str(nonutf)], [nonutf], expect_ok=False)

    # G. collect names
    for nm in ["../x", "", "a/b", ".", "x" * 300, "\x01", "ok-name"]:
        run(f"G collect --name {nm[:20]!r}", ["collect", "--name", nm, "--dry-run", "--", "true"], [], timeout=30)

    # H. compare / beside-trace documents
    j = WORK / "rj0.json"
    doc = json.loads(j.read_text()) if j.is_file() else {}
    for label, blob in {
        "no stages": json.dumps({k: v for k, v in doc.items() if k != "stages"}).encode(),
        "non-UTF-8": b'{"schema": "stagemfu.report/1", "stages": [\xff]}',
        "strings for numbers": json.dumps(
            {**doc, "stages": [{**s, "kernel_ns": "fast"} for s in doc.get("stages", [])]}
        ).encode(),
        "not json": b"<html>",
        "deep": b"[" * 100_000,
    }.items():
        f = WORK / f"cmp_{label.replace(' ', '_')}.json"
        f.write_bytes(blob)
        run(f"H compare {label}", ["compare", str(j), str(f)], [j, f], expect_ok=False)
    for side in ("run.json", "shapes.json"):
        for label, blob in {
            "wrong types": b'{"model": 5, "inputs": "x", "stages": 7}',
            "non-UTF-8": b'{"a": "\xff"}',
            "not json": b"garbage",
        }.items():
            dd = WORK / f"beside_{side}_{label.replace(' ', '_')}"
            dd.mkdir()
            t = dd / "trace.sqlite"
            shutil.copy(good, t)
            (dd / side).write_bytes(blob)
            run(f"H {side} beside trace: {label}", ["report", str(t), "--peak-tflops", "989"], [t, dd / side])

    bad = [r for r in results if r["problems"]]
    summary = {"tried": len(results), "clean": len(results) - len(bad), "by_group": {}, "bad": bad}
    for r in results:
        g = summary["by_group"].setdefault(r["case"].split()[0], [0, 0])
        g[0] += 1
        g[1] += not r["problems"]
    (WORK / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("tried", "clean", "by_group")}))


if __name__ == "__main__":
    main()
