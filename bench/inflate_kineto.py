#!/usr/bin/env python3
"""Make a large, realistic torch.profiler (Kineto) trace from a real one, for benchmarks.

    bench/inflate_kineto.py IN.json[.gz] OUT.json[.gz] COPIES

The events of IN are repeated COPIES times back to back in time, 1 ms apart; correlation ids (and
the flow ids that repeat them), External ids and the other flow ids are shifted so that every copy
keeps its own launch-to-operation links. Metadata events (``"ph": "M"``) are written once. The text
of every event is kept as Kineto wrote it apart from those numbers, so timestamps keep their three
decimals exactly (the shift is a whole number of microseconds). Per-stage results on OUT are
therefore COPIES times those on IN, which makes a benchmark on OUT check itself. OUT is gzip
compressed when its name ends in ``.gz``.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from decimal import Decimal
from pathlib import Path

GAP_US = 1000  # between the end of one copy and the start of the next
# The numbers each copy shifts: time stamps by a period, ids by the largest id + 1.
SPACE = re.compile(r"\s*")
SHIFTED = re.compile(rb'"(ts|correlation|id|External id|external id)": ?(-?\d+)')


def _events(text: str) -> tuple[int, int, list[tuple[str, dict]]]:
    """Where the traceEvents array's items start and end in ``text``, and each item's text and value."""
    decoder = json.JSONDecoder(parse_float=Decimal)
    start = text.index("[", text.index('"traceEvents"')) + 1
    items, pos = [], start
    while True:
        pos = SPACE.match(text, pos).end()
        if text[pos] == "]":
            return start, pos, items
        value, end = decoder.raw_decode(text, pos)
        items.append((text[pos:end], value))
        pos = SPACE.match(text, end).end()
        if text[pos] == ",":
            pos += 1


def inflate_kineto(source: Path, target: Path, copies: int) -> None:
    """Write ``target``: ``source`` with its events repeated ``copies`` times (see the module docstring)."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    raw = source.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
    start, end, items = _events(text)
    timed = [v for _, v in items if v.get("ph") == "X" and isinstance(v.get("ts"), (int, Decimal))]
    first = min(v["ts"] for v in timed)
    last = max(v["ts"] + v.get("dur", 0) for v in timed)
    period = int(last - first) + 1 + GAP_US
    ids = [0]
    for _, v in items:
        args = v.get("args") if isinstance(v.get("args"), dict) else {}
        ids += [v.get("id"), args.get("correlation"), args.get("External id"), args.get("external id")]
    shift_ids = max(i for i in ids if isinstance(i, int)) + 1
    repeated = ",\n".join(t for t, v in items if v.get("ph") != "M").encode()

    def shifted(k: int) -> bytes:
        def one(m: re.Match) -> bytes:
            by = k * period if m.group(1) == b"ts" else k * shift_ids
            return m.group(0)[: m.start(2) - m.start(0)] + str(int(m.group(2)) + by).encode()

        return SHIFTED.sub(one, repeated)

    opener = gzip.open if target.name.endswith(".gz") else open
    with opener(target, "wb") as out:
        out.write(text[:start].encode())
        out.write(",\n".join(t for t, _ in items).encode())
        for k in range(1, copies):
            out.write(b",\n")
            out.write(shifted(k))
        out.write(text[end:].encode())


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    inflate_kineto(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))


if __name__ == "__main__":
    main()
