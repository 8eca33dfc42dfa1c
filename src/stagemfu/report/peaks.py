"""Peak FLOP/s and memory bandwidth of the GPU a trace ran on: the denominator of MFU and MBU.

Two data tables, applied by name, never an if-chain:

- ``data/gpu_peaks.csv``: one row per GPU model with the device names CUDA reports for it
  (``NVIDIA H100 80GB HBM3`` is the H100 SXM5), dense datasheet TFLOP/s per dtype and memory
  bandwidth, each row with its source.
- ``data/gpu_archs.csv``: FLOPs per clock per SM for each architecture, with a name pattern, for a
  GPU the first table does not list (or lists without a figure for the dtype).

The figure is the *dense* one (2:4 sparsity figures are twice as large) with FP32 accumulation.
A derived peak multiplies the SM count and clock recorded in the trace by the architecture's
per-SM rate; nsys records the maximum clock, which on Hopper is 8 % above the clock the datasheet
uses, so a derived peak says so. A GPU matched by nothing raises :class:`PeakError`: there is no
silent default.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from importlib import resources

import polars as pl

from stagemfu.errors import PeakError
from stagemfu.models.shapes import DTYPES

SOURCES = ("datasheet", "derived", "override")
# What an override may say: far below the smallest and far above the largest GPU there is, so a
# typo (GFLOP/s for TFLOP/s, a missing digit) fails instead of printing an MFU of 5054 %.
PLAUSIBLE_TFLOPS = (0.1, 100_000.0)
PLAUSIBLE_GBS = (1.0, 100_000.0)


@dataclass(frozen=True)
class Peak:
    """The peak a report divides by.

    Attributes
    ----------
    gpu
        The device name (from the trace's ``TARGET_INFO_GPU`` or ``--gpu``), or ``None`` when only
        an override is known.
    model
        The table row it matched (``H100 SXM5``), ``None`` when none did.
    dtype
        Precision of the figure (``bf16``, ``fp16``, ``fp32``, ``tf32``, ``fp8``).
    tflops
        Dense peak, 10^12 FLOP/s.
    bandwidth_gbs
        Peak memory bandwidth in GB/s (10^9 B/s), ``None`` when unknown (then no MBU).
    source
        ``datasheet``, ``derived`` or ``override``.
    reference
        Where the figure comes from: the ``source`` column of ``data/gpu_peaks.csv`` (datasheets,
        code tables and pages that print it), the override's option, or the formula.
    notes
        Assumptions the user should know, e.g. the clock a derived figure used.
    """

    gpu: str | None
    model: str | None
    dtype: str
    tflops: float
    bandwidth_gbs: float | None
    source: str
    reference: str
    notes: tuple[str, ...] = field(default=())


def peak_table() -> pl.DataFrame:
    """The datasheet table: one row per GPU model, ``device_names`` and ``aliases`` (the short names
    that pick that row, such as ``H100`` for the SXM5) split into list columns."""
    return _read_csv("gpu_peaks.csv").with_columns(
        pl.col("device_names").str.split(";"), pl.col("aliases").fill_null("").str.split(";")
    )


def arch_table() -> pl.DataFrame:
    """FLOPs per clock per SM by architecture, with the name pattern that recognises it."""
    return _read_csv("gpu_archs.csv")


def resolve_peak(
    gpus: pl.DataFrame,
    *,
    dtype: str = "bf16",
    gpu: str | None = None,
    peak_tflops: float | None = None,
    peak_bandwidth_gbs: float | None = None,
) -> Peak:
    """The peak for a trace's GPU and a dtype.

    Parameters
    ----------
    gpus
        The trace's GPUs (``Trace.gpus``: ``id``, ``name``, ``sms``, ``clock_hz``).
    dtype
        Precision the model ran in.
    gpu
        A device name or table name (``H100 SXM5``) that replaces the trace's, for traces without
        ``TARGET_INFO_GPU`` or to ask "what if on another GPU".
    peak_tflops, peak_bandwidth_gbs
        Overrides (``--peak-tflops``/``STAGEMFU_PEAK_TFLOPS``, ``--peak-bandwidth``): used as given.

    Returns
    -------
    Peak

    Raises
    ------
    PeakError
        No figure can be found or derived for this GPU and dtype, or the trace holds GPUs of
        different models and neither ``gpu`` nor ``peak_tflops`` says which to use.
    """
    if dtype not in DTYPES:
        raise PeakError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    _plausible(peak_tflops, "--peak-tflops / STAGEMFU_PEAK_TFLOPS", "TFLOP/s", PLAUSIBLE_TFLOPS)
    _plausible(peak_bandwidth_gbs, "--peak-bandwidth / STAGEMFU_PEAK_BANDWIDTH", "GB/s", PLAUSIBLE_GBS)
    name, sms, clock_hz = _device(gpus, gpu, needed=peak_tflops is None)
    row = _table_row(name) if name else None
    if row is None and gpu is not None:
        row = _short_name_row(gpu, known_arch=_arch_known(gpu) and bool(sms))
    bandwidth = peak_bandwidth_gbs if peak_bandwidth_gbs is not None else (row or {}).get("bandwidth_gbs")
    model = row["gpu"] if row else None
    if peak_tflops is not None:
        return Peak(
            name, model, dtype, float(peak_tflops), bandwidth, "override", "--peak-tflops / STAGEMFU_PEAK_TFLOPS"
        )
    if row and row.get(f"{dtype}_tflops") is not None:
        return Peak(name, model, dtype, float(row[f"{dtype}_tflops"]), bandwidth, "datasheet", row["source"])
    tflops, reference, notes = _derive(name, dtype, sms=sms or (row or {}).get("sms"), clock_hz=clock_hz, row=row)
    return Peak(name, model, dtype, tflops, bandwidth, "derived", reference, notes)


def gpu_peak(
    gpu: str | None,
    *,
    dtype: str = "bf16",
    peak_tflops: float | None = None,
    peak_bandwidth_gbs: float | None = None,
) -> Peak | None:
    """The peak of a GPU named without a trace (``stagemfu analyze --gpu H200``), as :func:`resolve_peak`
    finds it; None when neither a GPU nor ``peak_tflops`` is given.

    Raises
    ------
    PeakError
        An unknown GPU or dtype, an implausible override, or a bandwidth override with nothing to go with it.
    """
    if gpu is None and peak_tflops is None:
        if peak_bandwidth_gbs is not None:
            raise PeakError("--peak-bandwidth needs --gpu NAME or --peak-tflops for the compute roof")
        return None
    no_trace = pl.DataFrame(schema={"id": pl.Int64, "name": pl.Utf8, "sms": pl.Int64, "clock_hz": pl.Int64})
    return resolve_peak(no_trace, dtype=dtype, gpu=gpu, peak_tflops=peak_tflops, peak_bandwidth_gbs=peak_bandwidth_gbs)


def _plausible(value: float | None, option: str, unit: str, bounds: tuple[float, float]) -> None:
    """An override must be a finite number within ``bounds``: NaN, infinities, 0 and negatives are refused."""
    if value is None:
        return
    low, high = bounds
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high):
        raise PeakError(
            f"{option} {value!r}: a peak must be a number of {unit} between {low:g} and {high:,.0f} "
            "(the datasheet figure of one GPU)"
        )


def _device(gpus: pl.DataFrame, gpu: str | None, *, needed: bool) -> tuple[str | None, int | None, int | None]:
    """(name, SMs, clock) of the GPU to use: ``--gpu`` wins, else the trace's single GPU model."""
    known = gpus.filter(pl.col("name").is_not_null() & (pl.col("name") != ""))
    if gpu is not None:
        same = known.filter(pl.col("name") == gpu)
        return (gpu, same["sms"][0], same["clock_hz"][0]) if same.height else (gpu, None, None)
    models = known.get_column("name").unique(maintain_order=True).to_list()
    if len(models) > 1 and needed:
        raise PeakError(f"the trace holds GPUs of different models ({', '.join(models)}); pass --gpu NAME to pick one")
    if not models:
        if needed:
            raise PeakError("the trace does not name its GPU (no TARGET_INFO_GPU); pass --gpu NAME or --peak-tflops")
        return None, None, None
    first = known.row(0, named=True)
    return first["name"], first["sms"], first["clock_hz"]


def _table_row(name: str) -> dict | None:
    """The table row whose device names or model name equal ``name`` (case and spacing ignored)."""
    key = _normal(name)
    table = peak_table()
    hit = table.filter(
        pl.col("device_names")
        .list.eval(pl.element().str.to_lowercase().str.replace_all(r"\s+", " "))
        .list.contains(key)
        | (pl.col("gpu").str.to_lowercase() == key)
    )
    return hit.row(0, named=True) if hit.height else None


def _short_name_row(name: str, *, known_arch: bool) -> dict | None:
    """The row a short ``--gpu`` name picks: its alias (``h100`` is the SXM5), else the one row whose
    model or device names hold every word of it (``a10g``, ``h100 nvl``).

    Raises ``PeakError`` listing the candidates when several rows match, and listing every known
    name when none does (unless the trace knows the SM count of a GPU of a recognised architecture,
    which is then derived).
    """
    words = _normal(name).removeprefix("nvidia ").replace("-", " ").split()
    table = peak_table()
    rows = table.to_dicts()
    alias = [r for r in rows if any(_normal(a).split() == words for a in r["aliases"] if a)]
    if alias:
        return alias[0]
    hits = [r for r in rows if all(w in _words(r) for w in words)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise PeakError(
            f"--gpu {name!r} matches several GPUs ({', '.join(r['gpu'] for r in hits)}); pass one of these names"
        )
    if known_arch:
        return None
    raise PeakError(
        f"--gpu {name!r}: not a GPU of stagemfu's peak table; known: {', '.join(table['gpu'])} (or the device "
        "name CUDA reports, such as 'NVIDIA H100 80GB HBM3'); or pass --peak-tflops"
    )


def _words(row: dict) -> set[str]:
    names = [row["gpu"], *row["device_names"], *(a for a in row["aliases"] if a)]
    return {w for n in names for w in _normal(n).replace("-", " ").split()}


def _arch_known(name: str) -> bool:
    return not arch_table().filter(pl.lit(name).str.contains(pl.col("name_pattern"))).is_empty()


def _derive(
    name: str | None, dtype: str, *, sms: int | None, clock_hz: int | None, row: dict | None
) -> tuple[float, str, tuple[str, ...]]:
    """SMs × clock × per-SM rate, with notes naming every assumption."""
    arch_name = row["arch"] if row else None
    archs = arch_table()
    arch = (
        archs.filter(pl.col("arch") == arch_name)
        if arch_name
        else archs.filter(pl.lit(name or "").str.contains(pl.col("name_pattern")))
    )
    if not name or arch.is_empty():
        raise PeakError(
            f"GPU {name!r}: not in stagemfu's peak table and its architecture is not recognised from the name; "
            "pass --peak-tflops (dense datasheet TFLOP/s for the dtype) or set STAGEMFU_PEAK_TFLOPS"
        )
    a = arch.row(0, named=True)
    rate = a.get(dtype)
    if rate is None:
        raise PeakError(f"GPU {name!r} ({a['arch']}): no {dtype} tensor rate is known; pass --peak-tflops")
    table_mhz = (row or {}).get("tensor_mhz")
    if not sms or not (clock_hz or table_mhz):
        raise PeakError(
            f"GPU {name!r}: no {dtype} datasheet figure and the trace does not record its SM count and clock; "
            "pass --peak-tflops"
        )
    clock = table_mhz * 1e6 if table_mhz else clock_hz
    tflops = sms * rate * clock / 1e12
    clock_note = (
        "the table's tensor clock"
        if table_mhz
        else "the maximum clock nsys records; datasheet peaks often use a lower tensor clock (1830 of 1980 MHz "
        "on H100 SXM), so this may overstate the peak by about 8 %"
    )
    arch_note = a["arch"] if row else f"{a['arch']}, assumed from the GPU's name"
    note = (
        f"peak derived, not from a datasheet: {sms} SMs × {clock / 1e6:.0f} MHz × {rate} {dtype} FLOPs per clock "
        f"per SM (architecture {arch_note}); the clock is {clock_note}; pass --peak-tflops to use a measured or "
        "datasheet figure"
    )
    return round(tflops, 1), f"derived: {a['source']}", (note,)


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _read_csv(name: str) -> pl.DataFrame:
    text = resources.files("stagemfu.data").joinpath(name).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    columns = {c: [r[c] or None for r in rows] for c in rows[0]}
    frame = pl.DataFrame(columns)
    ints = [c for c in frame.columns if c in (*DTYPES, "sms", "tensor_mhz")]
    floats = [c for c in frame.columns if c.endswith(("_tflops", "_gbs"))]
    return frame.with_columns(pl.col(ints).cast(pl.Int64), pl.col(floats).cast(pl.Float64))
