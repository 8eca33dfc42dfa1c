"""The JSON and YAML documents the report reads, and the schema each must follow, in one place.

A user hands the report FLOPs files (``--flops``), report JSONs (``compare``) and, beside a trace,
the ``run.json``/``shapes.json`` that ``stagemfu run`` wrote. Every such file is read here the same
way: as bytes, decoded as strict UTF-8, parsed (JSON without ``NaN``/``Infinity``; YAML with the
safe loader, no aliases, YAML 1.2 exponents such as ``2e9`` read as numbers) and checked against
its schema below. A file that does not fit raises one line that says where it is wrong::

    f.json: stages.prefill.flops: must be a non-negative integer, got "abc"

The schema language is a handful of small checkers; each takes a value and the place it was found
and returns the value in its checked form (FLOPs as ``int``) or raises :class:`Mismatch`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagemfu import schemas
from stagemfu.errors import MissingDependencyError, StagemfuError
from stagemfu.models.shapes import DTYPES

INT64_MAX = 2**63 - 1  # FLOPs, bytes and nanoseconds are Int64 columns
BASES = ("wall", "span", "busy", "kernel")
SHOWN_CHARS = 40  # of a wrong value, in the message


class Mismatch(Exception):
    """A value that does not fit its schema: where it is (``stages.prefill.flops``) and what it must be."""

    def __init__(self, where: str, message: str, *, right_type: bool = False) -> None:
        super().__init__(f"{where}: {message}" if where else f"the document {message}")
        self.where = where
        self.right_type = right_type  # the value had the right type but a wrong value (a negative count)


Check = Callable[[Any, str], Any]


def _shown(value: Any) -> str:
    """A wrong value as the message shows it: JSON spelling, one line, cut."""
    try:
        text = json.dumps(value, ensure_ascii=True, default=str)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _at(where: str, key: object) -> str:
    key = _shown(key) if not isinstance(key, str) or not re.fullmatch(r"[\w:*?.\-\[\]/ ]{1,60}", key) else key
    return f"{where}.{key}" if where else str(key)


def count(*, minimum: int = 0) -> Check:
    """A whole number of FLOPs, bytes, instances...: finite, at least ``minimum``, within Int64.

    A float (``1.5e12``, how JSON writers spell large counts) is rounded to the nearest integer.
    """
    wanted = "a non-negative integer" if minimum == 0 else f"an integer of at least {minimum}"

    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Mismatch(where, f"must be {wanted}, got {_shown(value)}")
        if value < minimum:
            raise Mismatch(where, f"must be {wanted}, got {_shown(value)}", right_type=True)
        if value > INT64_MAX:
            raise Mismatch(where, f"must be below 2^63 (9.2e18), got {_shown(value)}", right_type=True)
        return int(round(value))

    return check


def number() -> Check:
    """A finite number (a ratio such as an MFU)."""

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Mismatch(where, f"must be a finite number, got {_shown(value)}")
        return float(value)

    return check


def text(*, choices: tuple[str, ...] = ()) -> Check:
    def check(value: Any, where: str) -> str:
        if not isinstance(value, str) or (choices and value not in choices):
            wanted = f"one of {', '.join(choices)}" if choices else "text"
            raise Mismatch(where, f"must be {wanted}, got {_shown(value)}")
        return value

    return check


def flag() -> Check:
    def check(value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise Mismatch(where, f"must be true or false, got {_shown(value)}")
        return value

    return check


def anything() -> Check:
    return lambda value, where: value


def optional(inner: Check) -> Check:
    """``null`` or what ``inner`` accepts."""
    return lambda value, where: None if value is None else inner(value, where)


def list_of(item: Check, *, length: int | None = None) -> Check:
    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            wanted = f"a list of {length}" if length is not None else "a list"
            raise Mismatch(where, f"must be {wanted}, got {_shown(value)}")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return check


def mapping_of(value_check: Check, *, what: str = "a mapping", non_empty: bool = False) -> Check:
    """A mapping of text keys (stage names) to values ``value_check`` accepts, in file order."""

    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict) or (non_empty and not value):
            raise Mismatch(where, f"must be {what}, got {_shown(value)}")
        out = {}
        for key, v in value.items():
            if not isinstance(key, str) or not key:
                raise Mismatch(_at(where, key), "names must be non-empty text (quote the key)")
            out[key] = value_check(v, _at(where, key))
        return out

    return check


def record(fields: Mapping[str, Check], *, required: tuple[str, ...] = (), closed: bool = False) -> Check:
    """An object with known fields; others are kept as they are unless ``closed``."""

    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Mismatch(where, f"must be an object with {', '.join(fields)}, got {_shown(value)}")
        unknown = [k for k in value if k not in fields]
        if closed and unknown:  # first: a misspelt field is the likelier mistake than a missing one
            raise Mismatch(_at(where, unknown[0]), f"is not a known field (known: {', '.join(fields)})")
        missing = [k for k in required if k not in value]
        if missing:
            raise Mismatch(where, f"has no {missing[0]!r} (needs {', '.join(required)})")
        return {k: fields[k](v, _at(where, k)) if k in fields else v for k, v in value.items()}

    return check


def either(*checks: Check, what: str) -> Check:
    """The first of ``checks`` that accepts the value.

    When none does, the complaint of a check that got inside the value (an object whose
    ``flops`` is wrong) or found the right type with a wrong value is the precise one; otherwise
    the value is none of ``what``.
    """

    def check(value: Any, where: str) -> Any:
        errors = []
        for candidate in checks:
            try:
                return candidate(value, where)
            except Mismatch as err:
                errors.append(err)
        precise = [e for e in errors if e.right_type or len(e.where) > len(where)]
        if precise:
            raise precise[0]
        raise Mismatch(where, f"must be {what}, got {_shown(value)}")

    return check


# ------------------------------------------------------------------------------------------------
# The schemas.

# The analyzer's input shape, as `analyze` writes it in its document and `run` in shapes.json.
INPUTS = record(
    {
        "mode": optional(text()),
        "image_size": optional(list_of(count(minimum=1), length=2)),
        "crops": optional(count()),
        "text_tokens": optional(count()),
        "new_tokens": optional(count()),
        "batch": optional(count(minimum=1)),
        "dtype": optional(text(choices=DTYPES)),
        "full_logits": optional(flag()),
    }
)
COUNTER_FIELDS = ("flops_analytic", "flops_torch", "flops_fvcore")
KV_FIELDS = ("kv_read_bytes", "kv_write_bytes", "kv_bytes")
ANALYZE_STAGE = record(
    {
        "flops": optional(count()),
        "bytes": optional(count()),
        **{c: optional(count()) for c in KV_FIELDS},
        "params": optional(count()),
        **{c: optional(count()) for c in COUNTER_FIELDS},
        "notes": optional(list_of(text())),
    }
)
# `stagemfu analyze --format json`: stagemfu.analyze/1.
ANALYZE_DOCUMENT = record(
    {
        "schema": text(),
        "model": optional(either(text(), record({"name": optional(text())}), what="a name or {name: ...}")),
        "inputs": optional(INPUTS),
        "shapes": optional(record({"crop_grid": optional(list_of(count(), length=2))})),
        "stages": mapping_of(ANALYZE_STAGE, what="a mapping of stage name to counts", non_empty=True),
        "notes": optional(list_of(text())),
    },
    required=("stages",),
)
USER_STAGE = either(
    count(),
    record(
        {"flops": count(), "bytes": optional(count()), "instances": optional(count(minimum=1))},
        required=("flops",),
        closed=True,
    ),
    what="a non-negative integer or {flops, bytes, instances}",
)
USER_STAGES = mapping_of(USER_STAGE, what="a mapping of stage name to FLOPs", non_empty=True)
USER_META = {"dtype": optional(text(choices=DTYPES)), "model": optional(text())}
# A user's FLOPs file with a `stages` key; a bare mapping is USER_STAGES plus USER_DOCUMENT_META's keys.
USER_DOCUMENT = record({"stages": USER_STAGES, **USER_META}, required=("stages",), closed=True)
USER_DOCUMENT_META = record(USER_META, closed=True)
# `stagemfu report --format json` (stagemfu.report/1), the fields `compare` reads.
REPORT_STAGE = record(
    {
        "stage": text(),
        "flops": optional(count()),
        **{f"{b}_ns": optional(count()) for b in BASES},
        **{f"mfu_{b}": optional(number()) for b in BASES},
    },
    required=("stage", "flops", *(f"{b}_ns" for b in BASES), *(f"mfu_{b}" for b in BASES)),
)
REPORT_DOCUMENT = record(
    {
        "schema": text(),
        "stages": list_of(REPORT_STAGE),
        "kernels": optional(list_of(record({"name": text(), "kernel": text(), "total_ns": count()}))),
    },
    required=("schema", "stages"),
)
# run.json and shapes.json, written by `stagemfu run` beside its trace: the fields the report uses.
RUN_DOCUMENT = record(
    {
        "model": optional(text()),
        "config": optional(text()),
        "inputs": optional(INPUTS),
        "repeat": optional(count()),
        "command": optional(list_of(text())),
        "exit_status": optional(either(count(), number(), what="a number")),
        "started_at": optional(text()),
        "notes": optional(list_of(text())),
    }
)

# flops.json, the run-time count stagemfu.count_flops leaves beside a trace (stagemfu.analyzer.run_count)
RUN_COUNT_STAGE = record(
    {"flops": count(), "calls": count(minimum=1), "ops": optional(mapping_of(count()))}, required=("flops", "calls")
)
RUN_COUNT_DOCUMENT = record(
    {
        "schema": text(choices=(schemas.FLOPS,)),
        "counter": optional(text()),
        "torch": optional(text()),
        "dtype": optional(text(choices=DTYPES)),
        "total_flops": optional(count()),
        "stages": mapping_of(RUN_COUNT_STAGE, what="a mapping of stage name to its count"),
        "notes": optional(list_of(text())),
    },
    required=("schema", "stages"),
)


@dataclass(frozen=True)
class Document:
    """A parsed file: its path (for messages) and its content."""

    path: str | Path
    content: Any


def read_document(path: str | Path, *, what: str, error: type[StagemfuError], yaml: bool = False) -> Document:
    """Read a JSON file (with ``yaml``, a ``.yaml``/``.yml`` one is read as YAML) as strict UTF-8.

    Raises ``error`` with one line naming the file: unreadable, not UTF-8, not valid JSON/YAML,
    nested too deeply, or a YAML alias (a FLOPs file has no use for them, and they are how a small
    file expands into a huge document).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from err
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = f"byte 0x{raw[err.start]:02x} at offset {err.start}"
        raise error(f"{path}: the {what} is not UTF-8 text ({byte}); save it as UTF-8") from err
    try:
        if yaml and path.suffix.lower() in (".yaml", ".yml"):
            return Document(path, _yaml(content, path, what, error))
        return Document(path, json.loads(content, parse_constant=_no_constant))
    except RecursionError as err:
        raise error(f"{path}: the {what} is nested too deeply to be a {what}") from err
    except ValueError as err:  # JSONDecodeError and the NaN/Infinity refusal
        detail = f"{err.msg} at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else str(err)
        hint = "; use .yaml for YAML" if yaml else ""
        raise error(f"{path}: the {what} is not valid JSON ({detail}){hint}") from err


def check_document(doc: Document, schema: Check, *, error: type[StagemfuError], where: str = "") -> Any:
    """``doc``'s content checked against ``schema``; a mismatch is ``error`` naming the file and the place."""
    try:
        return schema(doc.content, where)
    except Mismatch as err:
        raise error(f"{doc.path}: {err}") from err
    except RecursionError as err:
        raise error(f"{doc.path}: nested too deeply") from err


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _yaml(content: str, path: Path, what: str, error: type[StagemfuError]) -> Any:
    try:
        import yaml
    except ImportError as err:
        raise MissingDependencyError(f"{path}: reading YAML needs PyYAML; `pip install pyyaml`") from err

    class Loader(yaml.SafeLoader):
        """The safe loader without aliases, reading ``2e9`` and ``1.5e12`` as numbers (YAML 1.2)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"alias *{event.anchor} at line {event.start_mark.line + 1}: aliases are refused")
            return super().compose_node(parent, index)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    try:
        return yaml.load(content, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise error(f"{path}: the {what} is not valid YAML ({' '.join(str(err).split())})") from err
