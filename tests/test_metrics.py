"""The metric registry: every table shows what the registry lists, and batches combine by each metric's rule."""

from __future__ import annotations

import numpy as np
import polars as pl

from stagemfu.postprocess import metrics
from stagemfu.postprocess.many import combine
from stagemfu.postprocess.metrics import METRICS, Segments, merge, reduce_segments


def test_batches_combine_by_each_metrics_merge_rule():
    first = pl.DataFrame({"rid": [0, 1], "gpu_start_ns": [10, 5], "gpu_end_ns": [20, 9], "busy_ns": [7, 4]})
    second = pl.DataFrame({"rid": [0], "gpu_start_ns": [30], "gpu_end_ns": [45], "busy_ns": [15]})
    merged = merge([first, second], ["rid"]).sort("rid").with_columns(metrics.derived())
    assert merged.select("rid", "gpu_start_ns", "gpu_end_ns", "busy_ns", "span_ns").rows() == [
        (0, 10, 45, 22, 35),
        (1, 5, 9, 4, 4),
    ]


def test_a_metric_that_does_not_add_must_say_how_it_merges():
    assert {m.merge for m in METRICS} <= {"sum", "min", "max"}
    assert [m.name for m in METRICS if m.merge != "sum"] == ["gpu_start_ns", "gpu_end_ns"]
    assert all(m.summed for m in METRICS if m.merge == "sum")  # a first start is not a total


def test_segment_reductions_against_plain_python():
    # two segments: [kernel 0-10, comm 5-15, memcpy 20-30], [kernel 100-110]
    s = Segments(
        bounds=np.array([0, 3]),
        start=np.array([0, 5, 20, 100]),
        end=np.array([10, 15, 30, 110]),
        is_kernel=np.array([True, True, False, True]),
        new_call=np.array([True, True, True, False]),
        is_comm=np.array([False, True, False, False]),
    )
    got = {k: v.tolist() for k, v in reduce_segments(s).items()}
    assert got == {
        "gpu_start_ns": [0, 100],
        "gpu_end_ns": [30, 110],
        "busy_ns": [25, 10],
        "kernel_ns": [20, 10],
        "comm_ns": [10, 0],
        "comm_busy_ns": [10, 0],
        "overlap_ns": [5, 0],  # comm 5-15 with the kernel 0-10
        "gpu_ops": [3, 0],
        "kernels": [2, 1],
    }


def test_every_table_shows_the_registry(loaded):
    st = loaded["tp_train"]
    assert [c for c in st.ranges.columns if c in metrics.BY_NAME] == metrics.SUMMED
    assert [c for c in st.instances.columns if c in metrics.BY_NAME] == metrics.SUMMED
    assert st.instance_stats["metric"].unique(maintain_order=True).to_list() == metrics.STATS
    assert [c for c in st.devices.columns if c in metrics.BY_NAME] == metrics.DEVICES
    assert st.totals.columns == st.unattributed.columns == metrics.TOTALS
    combined = combine([st, st], ["a", "b"]).combined
    for name in metrics.SPREAD:
        base = name.removesuffix("_ns")
        assert {f"{base}_min_ns", f"{base}_median_ns", f"{base}_max_ns"} <= set(combined.columns)
