"""Many traces at once: inputs expanded, per-trace results equal to single loads, the combined table,
the straggler view, and Dask results equal to the sequential path."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import FIXTURES, launch
from polars.testing import assert_frame_equal

from stagemfu import postprocess
from stagemfu.cli import cli
from stagemfu.errors import StagemfuError, TraceError
from stagemfu.postprocess.many import expand_inputs, load_many

RANK_BUSY = (100, 105, 200, 98)  # rank 2 is a straggler at any threshold under 80 %


def rank_trace(make_trace, directory, rank: int, busy: int):
    """One rank's export: a "step" range launching one kernel of ``busy`` ns, and a "load" range."""
    call, kernel = launch(1, (10, 20), (1000, 1000 + busy), name="gemm_kernel")
    load_call, load_kernel = launch(2, (60, 70), (2000, 2010), name="copy_kernel")
    return make_trace(
        directory,
        ranges=[{"start": 0, "end": 50, "text": "step"}, {"start": 55, "end": 90, "text": "load"}],
        calls=[call, load_call],
        kernels=[kernel, load_kernel],
        name=f"rank{rank}.sqlite",
    )


@pytest.fixture
def ranks(make_trace, tmp_path):
    directory = tmp_path / "ranks"
    directory.mkdir()
    (directory / "notes.txt").write_text("not a trace")
    return [rank_trace(make_trace, directory, r, busy) for r, busy in enumerate(RANK_BUSY)]


def test_directory_and_glob_expand_to_sorted_trace_files(ranks):
    directory = ranks[0].parent
    assert expand_inputs([directory]) == sorted(ranks)
    assert expand_inputs([str(directory / "rank[01].sqlite")]) == ranks[:2]
    assert expand_inputs([ranks[1], directory]) == [ranks[1], ranks[0], *ranks[2:]]  # each file once


def test_empty_directory_and_unmatched_pattern_name_themselves(tmp_path):
    with pytest.raises(TraceError, match=f"{tmp_path}: the directory holds no trace file"):
        expand_inputs([tmp_path])
    with pytest.raises(TraceError, match=r"nothing\*\.sqlite: the pattern matches no trace file"):
        expand_inputs([str(tmp_path / "nothing*.sqlite")])


def test_each_trace_result_equals_its_own_load(ranks):
    ct = load_many(ranks, jobs=1)
    assert ct.labels == tuple(str(p) for p in ranks)
    for path, st in zip(ranks, ct.traces):
        alone = postprocess.load(path)
        assert_frame_equal(st.ranges, alone.ranges)
        assert_frame_equal(st.instances, alone.instances)
        assert st.ops.is_empty() and st.trace.ops.held.is_empty()  # per-operation frames stay behind


def test_combined_sums_and_spreads_over_traces(ranks):
    ct = load_many(ranks, jobs=1)
    step = ct.combined.filter(pl.col("name") == "step").row(0, named=True)
    assert step["traces"] == len(RANK_BUSY)
    assert step["instances"] == len(RANK_BUSY)
    assert step["busy_ns"] == sum(RANK_BUSY)
    assert step["wall_ns"] == 50 * len(RANK_BUSY)
    assert (step["busy_min_ns"], step["busy_median_ns"], step["busy_max_ns"]) == (
        98,
        102,
        200,
    )  # median 102.5, ties to even
    assert ct.combined["name"].to_list() == ["step", "load"]


def test_stragglers_exceed_the_median_by_the_threshold(ranks):
    ct = load_many(ranks, jobs=1, threshold=0.1)
    assert ct.stragglers.select("trace", "name", "value_ns", "median_ns").rows() == [(str(ranks[2]), "step", 200, 102)]
    assert ct.stragglers["excess"][0] == pytest.approx(200 / 102.5 - 1)
    assert load_many(ranks, jobs=1, threshold=1.0).stragglers.is_empty()
    # Kernel time of "load" is equal on every rank: never a straggler, even at threshold 0.
    assert "load" not in load_many(ranks, jobs=1, threshold=0.0).stragglers["name"].to_list()


def test_bad_metric_or_threshold_is_a_user_error(ranks):
    with pytest.raises(StagemfuError, match="straggler metric 'flops_ns'"):
        load_many(ranks, metric="flops_ns")
    with pytest.raises(StagemfuError, match="negative"):
        load_many(ranks, threshold=-0.5)


def assert_same_results(a, b) -> None:
    assert a.labels == b.labels
    for name in ("combined", "per_trace", "stragglers"):
        assert_frame_equal(getattr(a, name), getattr(b, name))
    for x, y in zip(a.traces, b.traces):
        for table in ("ranges", "paths", "instances", "kernels", "devices", "processes", "totals"):
            assert_frame_equal(getattr(x, table), getattr(y, table))


def test_dask_cluster_gives_the_sequential_results(ranks, trace_paths):
    distributed = pytest.importorskip("distributed")
    inputs = [*ranks, trace_paths["tiny_vlm"], FIXTURES / "named_domain.sqlite.xz"]
    sequential = load_many(inputs, jobs=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        seen = []
        on_dask = load_many(inputs, scheduler=lc.scheduler_address, progress=lambda *a: seen.append(a))
    assert_same_results(sequential, on_dask)
    assert seen[-1] == ("traces", len(inputs), len(inputs))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_several_traces_json_document(ranks):
    result = invoke("postprocess", *ranks, "--format", "json", "--jobs", "1")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "stagemfu.postprocess.many/1"
    assert [t["schema"] for t in doc["traces"]] == ["stagemfu.postprocess/1"] * len(ranks)
    assert [t["trace"]["path"] for t in doc["traces"]] == [str(p) for p in ranks]
    assert doc["stragglers"][0]["trace"] == str(ranks[2])
    assert doc["straggler_metric"] == "busy_ns" and doc["straggler_threshold"] == 0.1
    step = next(r for r in doc["combined"] if r["name"] == "step")
    assert step["busy_ns"] == sum(RANK_BUSY)


def test_cli_local_cluster_equals_one_after_the_other(ranks):
    pytest.importorskip("distributed")
    directory = ranks[0].parent
    sequential = invoke("postprocess", directory, "--format", "json", "--jobs", "1")
    parallel = invoke("postprocess", directory, "--format", "json", "--jobs", "2", "--quiet")
    assert parallel.exit_code == 0, parallel.output
    assert json.loads(parallel.stdout) == json.loads(sequential.stdout)


@pytest.mark.parametrize("table", ["combined", "stragglers", "ranges", "kernels"])
def test_cli_csv_tables_of_several_traces(ranks, table):
    result = invoke("postprocess", *ranks, "--format", "csv", "--table", table, "--jobs", "1")
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(result.stdout.encode())
    if table == "combined":
        assert frame["traces"].to_list() == [len(ranks), len(ranks)]
    else:
        assert frame["trace"][0] == str(ranks[2] if table == "stragglers" else ranks[0])


@pytest.mark.parametrize("fmt", ["table", "md"])
def test_cli_views_show_combined_and_stragglers(ranks, fmt):
    result = invoke("postprocess", *ranks, "--format", fmt, "--jobs", "1", "--straggler-metric", "kernel")
    assert result.exit_code == 0, result.output
    assert "Combined over traces" in result.stdout
    assert "Stragglers (kernel > median + 10%)" in result.stdout
    assert "rank2.sqlite" in result.stdout


def test_cli_combined_table_of_one_trace_exits_2(ranks):
    result = invoke("postprocess", ranks[0], "--format", "csv", "--table", "combined")
    assert result.exit_code == 2
    assert "needs several traces" in result.output


def test_cli_bad_trace_among_many_names_it(ranks, tmp_path):
    bad = tmp_path / "broken.sqlite"
    bad.write_text("not sqlite")
    result = invoke("postprocess", *ranks, bad, "--jobs", "1")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and str(bad) in result.output


def test_unreachable_scheduler_is_one_line_naming_it(ranks):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    refused = pytest.raises(StagemfuError, match=r"Dask scheduler tcp://127.0.0.1:9: cannot connect")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), refused:
        load_many(ranks, scheduler="tcp://127.0.0.1:9")
