"""Peak lookup: CUDA's device names, dense datasheet figures, derivation for unknown GPUs, overrides."""

from __future__ import annotations

import polars as pl
import pytest

from stagemfu.errors import PeakError
from stagemfu.report.peaks import arch_table, peak_table, resolve_peak

REQUIRED_MODELS = (
    "V100 SXM2",
    "A100 SXM4 80GB",
    "A10",
    "A10G",
    "L4",
    "L40S",
    "H100 SXM5",
    "H100 PCIe",
    "H100 NVL",
    "H200",
    "H20",
    "B200",
    "GB200",
    "RTX 3090",
    "RTX 4090",
    "RTX 5090",
)


def gpus(name: str | None = "NVIDIA H100 80GB HBM3", sms: int | None = 132, clock_hz: int | None = 1_980_000_000):
    schema = {"id": pl.Int64, "name": pl.Utf8, "sms": pl.Int64, "clock_hz": pl.Int64}
    rows = [] if name is None else [(0, name, sms, clock_hz)]
    return pl.DataFrame(rows, schema=schema, orient="row")


@pytest.mark.parametrize(
    ("device", "dtype", "tflops", "bandwidth"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4, 3350),
        ("NVIDIA H100 80GB HBM3", "fp8", 1978.9, 3350),
        ("NVIDIA H100 80GB HBM3", "fp32", 67, 3350),
        ("NVIDIA H100 PCIe", "bf16", 756, 2000),
        ("NVIDIA H100 NVL", "bf16", 835.5, 3900),
        ("NVIDIA H200", "bf16", 989.5, 4800),
        ("NVIDIA H20", "bf16", 148, 4000),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312, 2039),
        ("NVIDIA A100 80GB PCIe", "fp16", 312, 1935),
        ("Tesla V100-SXM2-32GB", "fp16", 125, 900),
        ("NVIDIA A10", "bf16", 125, 600),
        ("NVIDIA L4", "bf16", 121, 300),
        ("NVIDIA L40S", "bf16", 362, 864),
        ("NVIDIA GeForce RTX 3090", "bf16", 71.2, 936),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2, 1008),
        ("NVIDIA GeForce RTX 5090", "bf16", 209.5, 1792),
        ("NVIDIA B200", "bf16", 2250, 7700),
        ("NVIDIA GB200", "bf16", 2500, 8000),
    ],
)
def test_cuda_device_name_gives_the_dense_datasheet_figure(device, dtype, tflops, bandwidth):
    peak = resolve_peak(gpus(device), dtype=dtype)
    assert (peak.tflops, peak.bandwidth_gbs, peak.source) == (tflops, bandwidth, "datasheet")
    assert peak.gpu == device and peak.reference and not peak.notes


def test_table_covers_the_gpus_the_issue_names_and_every_row_has_a_source():
    table = peak_table()
    assert set(REQUIRED_MODELS) <= set(table["gpu"])
    assert table["source"].null_count() == 0
    names = table["device_names"].explode()
    assert names.is_duplicated().sum() == 0, "a device name must map to one row"


def test_every_device_name_finds_its_own_row():
    for row in peak_table().iter_rows(named=True):
        dtype = "bf16" if row["bf16_tflops"] is not None or row["arch"] not in ("volta", "turing") else "fp16"
        for name in row["device_names"]:
            peak = resolve_peak(gpus(name, sms=row["sms"] or 100, clock_hz=1_500_000_000), dtype=dtype)
            assert peak.model == row["gpu"]


def test_table_figures_agree_with_sms_times_tensor_clock_times_per_sm_rate():
    # A typo in a figure, an SM count or a clock shows up as a disagreement with the arithmetic.
    rates = {r["arch"]: r for r in arch_table().iter_rows(named=True)}
    checked = 0
    for row in peak_table().iter_rows(named=True):
        dtype = "bf16" if row["bf16_tflops"] is not None else "fp16"
        rate = rates[row["arch"]][dtype]
        if row["sms"] is None or row["tensor_mhz"] is None or row[f"{dtype}_tflops"] is None:
            continue
        derived = row["sms"] * rate * row["tensor_mhz"] * 1e6 / 1e12
        assert derived == pytest.approx(row[f"{dtype}_tflops"], rel=0.02), row["gpu"]
        checked += 1
    assert checked >= 15


def test_name_lookup_ignores_case_and_spacing_and_accepts_the_table_name():
    assert resolve_peak(gpus("nvidia  h100 80gb hbm3")).tflops == 989.4
    assert resolve_peak(gpus(None), gpu="H100 SXM5").tflops == 989.4


def test_unknown_gpu_of_a_known_architecture_is_derived_with_a_warning_naming_the_assumptions():
    peak = resolve_peak(gpus("NVIDIA H800 PCIe", sms=114, clock_hz=1_755_000_000))
    assert peak.source == "derived"
    assert peak.tflops == pytest.approx(114 * 4096 * 1.755e9 / 1e12, abs=0.1)
    (note,) = peak.notes
    for words in ("114 SMs", "1755 MHz", "4096 bf16 FLOPs", "hopper", "assumed from the GPU's name", "8 %"):
        assert words in note
    assert peak.bandwidth_gbs is None


def test_listed_gpu_without_a_verified_figure_is_derived_from_the_trace():
    peak = resolve_peak(gpus("NVIDIA A10G", sms=80, clock_hz=1_710_000_000))
    assert (peak.source, peak.model, peak.bandwidth_gbs) == ("derived", "A10G", 600)
    assert peak.tflops == pytest.approx(80 * 1024 * 1.71e9 / 1e12, abs=0.1)


def test_unrecognised_gpu_raises_and_names_the_override():
    with pytest.raises(PeakError, match="--peak-tflops"):
        resolve_peak(gpus("Some Future Accelerator", sms=10, clock_hz=10**9))


def test_dtype_the_gpu_cannot_run_raises():
    with pytest.raises(PeakError, match="no bf16"):
        resolve_peak(gpus("Tesla V100-SXM2-16GB", sms=80, clock_hz=1_530_000_000), dtype="bf16")
    with pytest.raises(PeakError, match="dtype 'int4'"):
        resolve_peak(gpus(), dtype="int4")


def test_override_wins_and_keeps_the_table_bandwidth():
    peak = resolve_peak(gpus(), peak_tflops=800.0)
    assert (peak.tflops, peak.source, peak.bandwidth_gbs) == (800.0, "override", 3350)
    assert resolve_peak(gpus(None), peak_tflops=5, peak_bandwidth_gbs=100).bandwidth_gbs == 100
    with pytest.raises(PeakError, match="between 0.1 and 100,000"):
        resolve_peak(gpus(), peak_tflops=0)


def test_trace_without_gpu_names_needs_gpu_or_override():
    with pytest.raises(PeakError, match="--gpu NAME or --peak-tflops"):
        resolve_peak(gpus(None))


def test_gpus_of_two_models_need_a_choice():
    mixed = pl.concat([gpus(), gpus("NVIDIA A100-SXM4-80GB").with_columns(id=pl.lit(1, pl.Int64))])
    with pytest.raises(PeakError, match="different models"):
        resolve_peak(mixed)
    assert resolve_peak(mixed, gpu="NVIDIA A100-SXM4-80GB").tflops == 312


@pytest.mark.parametrize(
    ("short", "model"),
    [
        ("H100", "H100 SXM5"),  # the SXM5 is the H100 the short name means (its alias in the table)
        ("h100", "H100 SXM5"),
        ("h100 nvl", "H100 NVL"),
        ("nvidia h100 pcie", "H100 PCIe"),
        ("A100-SXM4-80GB", "A100 SXM4 80GB"),
        ("rtx 4090", "RTX 4090"),
        ("B200", "B200"),
        ("h200", "H200"),
    ],
)
def test_gpu_option_takes_unambiguous_short_names(short, model):
    peak = resolve_peak(gpus(), gpu=short)
    assert (peak.model, peak.source) == (model, "datasheet")


def test_ambiguous_short_gpu_name_lists_the_candidates():
    with pytest.raises(PeakError, match=r"matches several GPUs \(A100 SXM4 40GB, A100 SXM4 80GB, A100 PCIe 40GB, "):
        resolve_peak(gpus(), gpu="A100")


def test_unknown_gpu_option_lists_the_known_names():
    with pytest.raises(PeakError, match=r"known: V100 SXM2, .*H100 SXM5, .*GB200") as err:
        resolve_peak(gpus(), gpu="Mystery 9000")
    assert "\n" not in str(err.value)


def test_every_source_cites_what_is_shipped_not_a_reference_file():
    for source in [*peak_table()["source"], *arch_table()["source"]]:
        assert source and "gpu-peaks.md" not in source and "shared/reference" not in source
