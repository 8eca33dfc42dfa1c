"""FLOPs, bytes and KV cache per stage over a grid of input shapes: the analyzer's what-if sweep.

``stagemfu analyze MODEL --sweep batch=1,8,64 --sweep text_tokens=256,2048`` counts every
combination of the values given (here 6), each like ``stagemfu analyze`` with the other inputs as
given; one table holds every stage of every combination, the swept values as its first columns.
The axes are the inputs that change the work: ``batch``, ``text_tokens``, ``new_tokens``,
``crops`` (gundam mode) and ``mode``. A value that is not one of the axis's (a word for a count,
0 sequences, an unknown mode, a value given twice) is refused in one line before anything is
counted.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from stagemfu.analyzer import analyze
from stagemfu.errors import ModelConfigError
from stagemfu.models.presets import ModelSpec
from stagemfu.models.shapes import MAX_INPUT, MODES, Inputs

# Axis -> (polars type of its column, smallest value) ; mode's values are names, not counts.
AXES: dict[str, tuple[Any, int | None]] = {
    "batch": (pl.Int64, 1),
    "text_tokens": (pl.Int64, 1),
    "new_tokens": (pl.Int64, 1),
    "crops": (pl.Int64, 0),
    "mode": (pl.Utf8, None),
}
MAX_POINTS = 4096  # combinations one sweep may count (each is one analysis)


@dataclass(frozen=True)
class Sweep:
    """The analyzer's counts over a grid of inputs.

    Attributes
    ----------
    spec, base
        The model and the inputs every combination starts from.
    axes
        Axis -> the values swept, in the order given.
    stages
        One row per combination and stage: ``point`` (the combination's index, from 0), the swept
        values (one column per axis, named as the axis), then
        :data:`stagemfu.analyzer.STAGE_COLUMNS` without ``notes``.
    notes
        The analyses' notes, each once.
    """

    spec: ModelSpec
    base: Inputs
    axes: dict[str, tuple[Any, ...]]
    stages: pl.DataFrame
    notes: tuple[str, ...]


def combinations(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values of ``axes`` (the last axis varying fastest); one empty one for no axes."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def parse_sweeps(texts: Iterable[str]) -> dict[str, tuple[Any, ...]]:
    """``("batch=1,8,64", "mode=base,gundam")`` -> ``{"batch": (1, 8, 64), "mode": ("base", "gundam")}``.

    ``NAME`` may be spelt with a dash (``text-tokens``), as the flag of the same input is.

    Raises
    ------
    ModelConfigError
        One line naming the ``--sweep`` value and what is wrong: no ``=``, an unknown axis, an
        axis given twice, no values, a value that is not a whole number in range or not a mode, a
        value given twice, or more than :data:`MAX_POINTS` combinations.
    """
    axes: dict[str, tuple[Any, ...]] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        axis = name.strip().replace("-", "_")
        where = f"--sweep {_shown(text)}"
        if not sep or axis not in AXES:
            raise ModelConfigError(f"{where}: write NAME=V1,V2,... with NAME one of {', '.join(AXES)}")
        if axis in axes:
            raise ModelConfigError(f"{where}: {axis} is swept twice; give its values in one --sweep")
        parsed = tuple(_value(axis, v.strip(), where) for v in values.split(","))
        repeated = next((v for i, v in enumerate(parsed) if v in parsed[:i]), None)
        if repeated is not None:
            raise ModelConfigError(f"{where}: {_shown(str(repeated))} is given twice")
        axes[axis] = parsed
    points = 1
    for values in axes.values():
        points *= len(values)
    if points > MAX_POINTS:
        raise ModelConfigError(f"--sweep: {points:,} combinations; sweep at most {MAX_POINTS:,} at once")
    return axes


def sweep(
    spec: ModelSpec, base: Inputs, axes: Mapping[str, Sequence[Any]], *, counters: tuple[str, ...] = ("analytic",)
) -> Sweep:
    """Count ``spec`` at every combination of ``axes`` over ``base``.

    Parameters
    ----------
    spec
        The model.
    base
        The inputs not swept (and the swept ones' defaults).
    axes
        Axis (:data:`AXES`) -> values, as :func:`parse_sweeps` gives them; no axes counts ``base`` alone.
    counters
        The counters to run at every combination; by default the analytic one alone (the others
        build the model each time: seconds per combination).

    Returns
    -------
    Sweep

    Raises
    ------
    ModelConfigError
        A combination the model cannot take (crops outside gundam mode, ...): the message names
        the combination.
    """
    axes = {name: tuple(values) for name, values in axes.items()}
    unknown = [name for name in axes if name not in AXES]
    if unknown:
        raise ModelConfigError(f"--sweep {unknown[0]}: not an input to sweep; use one of {', '.join(AXES)}")
    images = [name for name in ("mode", "crops") if name in axes]
    if images and spec.family.image_rule is None:
        raise ModelConfigError(f"--sweep {images[0]}: {spec.name} is a text-only model, which has no {images[0]}")
    frames, notes = [], {}
    for index, point in enumerate(combinations(axes)):
        try:
            analysis = analyze(spec, dataclasses.replace(base, **point), counters=counters)
        except ModelConfigError as err:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ModelConfigError(f"at {shown}: {err}") from err
        notes.update(dict.fromkeys(analysis.notes))
        swept = [pl.lit(value, AXES[name][0]).alias(name) for name, value in point.items()]
        frames.append(analysis.stages.drop("notes").select(pl.lit(index, pl.Int64).alias("point"), *swept, pl.all()))
    return Sweep(spec, base, axes, pl.concat(frames), tuple(notes))


def _value(axis: str, text: str, where: str) -> Any:
    """One swept value, checked as the input it stands for is."""
    kind, minimum = AXES[axis]
    if kind == pl.Utf8:
        if text not in MODES:
            raise ModelConfigError(f"{where}: mode {_shown(text)} is not one of {', '.join(MODES)}")
        return text
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and minimum <= int(text) <= MAX_INPUT):
        shown = _shown(text) or "(nothing)"
        raise ModelConfigError(f"{where}: {shown} is not a {axis} value; give whole numbers {minimum} to {MAX_INPUT}")
    return int(text)


def _shown(text: str) -> str:
    """User text in a message: control characters escaped, at most 40 characters."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= 40 else shown[:37] + "..."
