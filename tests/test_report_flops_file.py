"""FLOPs files: the analyzer's JSON, JSON/YAML stage mappings, and one-line errors for bad ones."""

from __future__ import annotations

import pytest
from report_traces import ANALYSIS, write_json

from stagemfu.errors import FlopsFileError
from stagemfu.report.flops_file import read_flops_file


def by_stage(sf):
    return {r["stage"]: r for r in sf.stages.iter_rows(named=True)}


def test_analyzer_document_keeps_each_counter_and_the_steps_per_generation(tmp_path):
    sf = read_flops_file(write_json(tmp_path / "a.json", ANALYSIS))
    s = by_stage(sf)
    assert "encoder" not in s  # no counter measured it: absent, never 0
    assert (s["vision"]["flops_analytic"], s["vision"]["flops_torch"], s["vision"]["flops_fvcore"]) == (
        200_000,
        190_000,
        None,
    )
    assert (s["decode"]["instances"], s["prefill"]["instances"], s["decode_first"]["instances"]) == (2, 1, 1)
    assert sf.prefill_excludes_vision and sf.model == "toy" and sf.batch == 1
    assert sf.notes == ("torch's counter misses the vision attention",)


def test_yaml_mapping_with_exponents_bytes_and_instances(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("dtype: fp16\nstages:\n  prefill: 1.5e12\n  decode: {flops: 2e9, bytes: 1_000, instances: 31}\n")
    sf = read_flops_file(path)
    s = by_stage(sf)
    assert s["prefill"]["flops"] == 1_500_000_000_000  # PyYAML reads 1.5e12 as a string; it is still a number
    assert (s["decode"]["flops"], s["decode"]["bytes"], s["decode"]["instances"]) == (2_000_000_000, 1000, 31)
    assert sf.dtype == "fp16" and not sf.prefill_excludes_vision


def test_bare_json_mapping(tmp_path):
    sf = read_flops_file(write_json(tmp_path / "f.json", {"sam": 10, "clip": {"flops": 20}}))
    assert sf.stages.select("stage", "flops").rows() == [("sam", 10), ("clip", 20)]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"prefill": -1}', "not a non-negative number"),
        ('{"prefill": "many"}', "not a non-negative number"),
        ('{"prefill": {"flop": 1}}', "expected a number or"),
        ('{"prefill": {"flops": 1, "instances": 0}}', "at least 1"),
        ("[1, 2]", "mapping of stage name"),
        ("{", "not valid JSON"),
        ('{"stages": 3}', "'stages' must be a mapping"),
    ],
)
def test_bad_flops_file_is_one_line_error_naming_the_file(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FlopsFileError, match=words) as err:
        read_flops_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_flops_file(tmp_path):
    with pytest.raises(FlopsFileError, match="cannot read"):
        read_flops_file(tmp_path / "nope.json")
