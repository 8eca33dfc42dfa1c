"""Typed reads of a model config: every value checked once, every failure one line naming key and file.

A published config.json is JSON written by people and by conversion scripts: a size can be
``-2048``, ``0``, ``true``, ``"4096"``, ``2048.0``, ``null`` or an object. Counting FLOPs from such a
value gives negative or absurd figures, or a Python exception deep in a formula. So each family
reads its config through :class:`ConfigReader`, whose methods return a value of the promised type
in the promised range or raise :class:`~stagemfu.errors.ModelConfigError` with the dotted key, the
value, the file and what to do.

Sizes are bounded by ``MAX_SIZE`` (2**31 - 1): every published model is far below it, and the
bound keeps the products the formulas take well inside Python's exact integers and numpy's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stagemfu.errors import ModelConfigError

MAX_SIZE = 2**31 - 1
REQUIRED: Any = object()  # as a default: the key must be present


class ConfigReader:
    """Read one config (or one object inside it) with types and ranges checked.

    Parameters
    ----------
    config
        The JSON object.
    source
        Where it comes from (file, preset URL, ``--config`` overlay), for messages.
    prefix
        Dotted path of this object inside the whole config (``text_config.``), for messages.

    A key whose value is ``null`` counts as absent, as transformers' configs write unset keys.
    """

    def __init__(self, config: dict[str, Any], source: str, prefix: str = ""):
        self.config = config
        self.source = source
        self.prefix = prefix

    def error(self, key: str, problem: str) -> ModelConfigError:
        """The one-line error for ``key``: where, what is wrong, what to do."""
        return ModelConfigError(
            f"{self.source}: {self.prefix}{key} {problem}; fix the model config (or pass --config FILE)"
        )

    def has(self, key: str) -> bool:
        """True when ``key`` is present and not null."""
        return self.config.get(key) is not None

    def raw(self, key: str, default: Any = REQUIRED) -> Any:
        """The value as stored; a missing key without a default is an error."""
        value = self.config.get(key)
        if value is not None:
            return value
        if default is REQUIRED:
            raise self.error(key, "is missing")
        return default

    def section(self, key: str) -> ConfigReader:
        """The reader of the object at ``key``."""
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.error(key, f"must be an object, not {_shown(value)}")
        return ConfigReader(value, self.source, f"{self.prefix}{key}.")

    def integer(self, key: str, *, default: Any = REQUIRED, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
        """A whole number from ``minimum`` to ``maximum`` (booleans and floats are refused)."""
        value = self.raw(key, default)
        return self._whole(key, value, minimum, maximum)

    def optional_integer(self, key: str, *, absent: int | None, minimum: int = 1) -> int | None:
        """A whole number where ``null`` means "none" (a sliding window, a low-rank q) and an absent
        key means ``absent``, as transformers reads such keys."""
        if key not in self.config:
            return absent
        return None if self.config[key] is None else self.integer(key, minimum=minimum)

    def number(self, key: str, *, default: Any = REQUIRED, maximum: float = MAX_SIZE) -> float:
        """A finite number above 0 (ratios such as SAM's ``mlp_ratio``)."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"= {_shown(value)} must be a number")
        if not 0 < value <= maximum:
            raise self.error(key, f"= {_shown(value)} must be above 0 and at most {maximum:g}")
        return float(value)

    def flag(self, key: str, *, default: bool) -> bool:
        """A JSON boolean."""
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"= {_shown(value)} must be true or false")
        return value

    def integers(
        self, key: str, *, minimum: int = 0, maximum: int = MAX_SIZE, default: Any = REQUIRED
    ) -> tuple[int, ...]:
        """A list of whole numbers, each from ``minimum`` to ``maximum``."""
        value = self.raw(key, default)
        if not isinstance(value, (list, tuple)):
            raise self.error(key, f"= {_shown(value)} must be a list of whole numbers")
        return tuple(self._whole(f"{key}[{index}]", item, minimum, maximum) for index, item in enumerate(value))

    def choices(self, key: str, allowed: Sequence[str]) -> tuple[str, ...]:
        """A list of strings, each one of ``allowed``."""
        value = self.raw(key)
        if not isinstance(value, (list, tuple)):
            raise self.error(key, f"= {_shown(value)} must be a list of {' / '.join(map(repr, allowed))}")
        for index, item in enumerate(value):
            if item not in allowed:
                raise self.error(f"{key}[{index}]", f"= {_shown(item)} must be one of {', '.join(map(repr, allowed))}")
        return tuple(value)

    def check(self, condition: bool, key: str, problem: str) -> None:
        """Raise the one-line error for ``key`` unless ``condition`` holds (a rule between keys)."""
        if not condition:
            raise self.error(key, problem)

    def _whole(self, key: str, value: Any, minimum: int, maximum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"= {_shown(value)} must be a whole number")
        if not minimum <= value <= maximum:
            raise self.error(key, f"= {_shown(value)} must be from {minimum} to {maximum}")
        return value


def _shown(value: Any) -> str:
    """A config value as the message shows it: JSON spelling, at most 40 characters, one line."""
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, (dict, list, tuple)):
        text = type(value).__name__.replace("dict", "an object").replace("tuple", "a list").replace("list", "a list")
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."
