"""The Python API: everything from ``import stagemfu``, results that show briefly in a prompt and in
Jupyter, FLOPs given as a mapping, and the notebook example of docs/api.md, run as written."""

from __future__ import annotations

import doctest
import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

import stagemfu
from stagemfu.errors import FlopsFileError, ModelConfigError
from stagemfu.report.render.analyze_data import analyze_json

API_DOC = ROOT / "docs" / "api.md"
FLOPS = {"prefill": 1_600_000_000_000, "decode": {"flops": 8_200_000_000, "bytes": 8_200_000_000}}


def fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet) and return its stdout."""
    env_path = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r})\n{code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_subpackages_and_functions_are_reachable_from_import_stagemfu():
    out = fresh_python(
        "import stagemfu\n"
        "print(stagemfu.postprocess.load.__module__, stagemfu.report.report.__name__, "
        "stagemfu.analyzer.analyze.__name__, stagemfu.data.default_trace().name)\n"
        "print(stagemfu.load is stagemfu.postprocess.load, stagemfu.load_many is stagemfu.postprocess.load_many)\n"
        "print(stagemfu.StageTimes.__name__, stagemfu.MfuReport.__name__, stagemfu.Analysis.__name__, "
        "stagemfu.CombinedTimes.__name__, stagemfu.Comparison.__name__, stagemfu.StagemfuError.__name__)"
    )
    assert out.splitlines() == [
        "stagemfu.postprocess report analyze deepseek_ocr2_base.sqlite.xz",
        "True True",
        "StageTimes MfuReport Analysis CombinedTimes Comparison StagemfuError",
    ]


def test_an_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        _ = stagemfu.nosuch


def test_dir_lists_the_public_names():
    assert {"load", "load_many", "analyze", "compare", "report", "postprocess", "StageTimes"} <= set(dir(stagemfu))


def test_stage_times_repr_is_one_line_and_html_escapes_hostile_names(trace_paths):
    st = stagemfu.load(trace_paths["named_domain"])
    text = repr(st)
    assert "\n" not in text and text.startswith("<StageTimes of ") and text.endswith("; 1 note>")
    assert f"{st.ranges.height} ranges, {st.instances.height} instances, 38 kernels" in text
    page = st._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "x" * 200 not in page  # the 20,000-character name is cut
    assert f"10 of {st.ranges.height} rows of <code>.ranges</code>, by busy time" in page
    assert page.count("<tr>") == 11  # header and ten rows


def test_repr_escapes_control_characters(trace_paths, tmp_path):
    hostile = tmp_path / "a\x1b[31mred\nb.sqlite"
    hostile.write_bytes(trace_paths["tiny_vlm"].read_bytes())
    text = repr(stagemfu.load(hostile))
    assert "\x1b" not in text and "\n" not in text and "\\x1b[31mred\\nb.sqlite" in text


@pytest.fixture(scope="module")
def mfu_report():
    return stagemfu.report.report(stagemfu.data.default_trace(), flops=FLOPS)


def test_report_takes_flops_as_a_mapping_like_a_file(mfu_report, tmp_path):
    path = tmp_path / "flops.json"
    path.write_text(json.dumps(FLOPS))
    from_file = stagemfu.report.report(stagemfu.data.default_trace(), flops_file=path)
    assert mfu_report.stages.equals(from_file.stages)
    assert mfu_report.flops.source == "flops mapping"
    assert mfu_report.stages.filter(stage="decode")["bytes"].item() == 8_200_000_000


def test_report_takes_the_analyzers_result_like_its_json(tmp_path):
    analysis = stagemfu.analyze("deepseek-ocr2", mode="base", text_tokens=32, new_tokens=8, counters=("analytic",))
    path = tmp_path / "analysis.json"
    path.write_text(analyze_json(analysis))
    trace = stagemfu.data.default_trace()
    assert stagemfu.report.report(trace, flops=analysis).stages.equals(
        stagemfu.report.report(trace, flops_file=path).stages
    )


@pytest.mark.parametrize(
    ("flops", "message"),
    [
        ({"prefill": -1}, "flops mapping: prefill: must be a non-negative integer, got -1"),
        ({"prefill": {"flop": 1}}, "flops mapping: prefill.flop: is not a known field"),
        ([("prefill", 1)], "flops: expected a mapping of stage name to FLOPs or an Analysis, not a list"),
        ({}, "flops mapping: the document must be a mapping of stage name to FLOPs"),
    ],
    ids=["negative", "bad-key", "not-a-mapping", "empty"],
)
def test_bad_flops_mapping_is_one_line(flops, message):
    with pytest.raises(FlopsFileError) as err:
        stagemfu.report.report(stagemfu.data.default_trace(), flops=flops)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_flops_given_twice_is_an_error(tmp_path):
    with pytest.raises(FlopsFileError, match="FLOPs given twice"):
        stagemfu.report.report(stagemfu.data.default_trace(), flops=FLOPS, flops_file=tmp_path / "f.json")


def test_report_and_analysis_show_briefly(mfu_report):
    text = repr(mfu_report)
    assert text.startswith("<MfuReport of ") and "2 stages, peak 989.4 TFLOP/s bf16 (datasheet)" in text
    assert "prefill + decode MFU kernel 4.6 %, wall 0.7 %" in text and "\n" not in text
    page = mfu_report._repr_html_()
    assert "<th>MFU kernel</th>" in page and "<td>prefill</td><td>1,600.000</td>" in page
    analysis = stagemfu.analyze("deepseek-ocr", counters=("analytic",))
    assert repr(analysis).startswith("<Analysis of deepseek-ocr: 8 stages, ") and "counters analytic" in repr(analysis)
    assert "<td>sam</td>" in analysis._repr_html_()


def test_combined_times_show_briefly(trace_paths):
    ct = stagemfu.load_many([trace_paths["tiny_vlm"], trace_paths["named_domain"]], jobs=1)
    assert repr(ct).startswith(f"<CombinedTimes of 2 traces: {ct.combined.height} ranges, ")
    assert "by median busy" in ct._repr_html_()


def test_analyze_rejects_an_unknown_input_in_one_line():
    with pytest.raises(ModelConfigError, match="unexpected keyword argument 'tokens'"):
        stagemfu.analyze("deepseek-ocr", tokens=3)


def test_compare_takes_reports_and_report_files(mfu_report, tmp_path):
    from stagemfu.report.render.report_data import report_document

    path = tmp_path / "r.json"
    path.write_text(json.dumps(report_document(mfu_report)))
    c = stagemfu.compare(mfu_report, path, labels=("memory", "file"))
    assert (c.a, c.b) == ("memory", "file")
    assert c.stages.select("stage", "flops_a", "flops_b").rows() == [
        ("prefill", 1_600_000_000_000, 1_600_000_000_000),
        ("decode", 8_200_000_000, 8_200_000_000),
    ]
    assert c.stages["mfu_kernel_delta"].abs().max() < 1e-12


def test_the_notebook_example_of_the_api_doc_runs_as_written():
    """Every ```python block of docs/api.md, in order, as one doctest (``...`` matches paths)."""
    blocks = re.findall(r"```python\n(.*?)```", API_DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 4
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, "docs/api.md", str(API_DOC), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    failures = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
    assert len(test.examples) >= 15
