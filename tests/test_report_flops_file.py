"""FLOPs files: the analyzer's JSON, JSON/YAML stage mappings, and one-line errors for bad ones."""

from __future__ import annotations

import re

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
        ('{"prefill": -1}', "prefill: must be a non-negative integer, got -1"),
        ('{"prefill": "many"}', 'prefill: must be a non-negative integer or {flops, bytes, instances}, got "many"'),
        ('{"stages": {"prefill": {"flops": "x"}}}', 'stages.prefill.flops: must be a non-negative integer, got "x"'),
        ('{"prefill": {"flop": 1}}', "prefill.flop: is not a known field"),
        ('{"prefill": {"flops": 1, "instances": 0}}', "prefill.instances: must be an integer of at least 1"),
        ('{"prefill": Infinity}', "Infinity is not a number JSON allows"),
        ('{"prefill": NaN}', "NaN is not a number JSON allows"),
        ('{"prefill": 1e30}', "prefill: must be below 2\\^63"),
        ('{"prefill": true}', "prefill: must be a non-negative integer"),
        ('{"stages": {"prefill": 1}, "dtype": "int4"}', "dtype: must be one of bf16"),
        ("[1, 2]", "mapping of stage name"),
        ("{", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"stages": 3}', "stages: must be a mapping of stage name to FLOPs"),
        ('{"stages": {}}', "stages: must be a mapping of stage name to FLOPs"),
    ],
)
def test_bad_flops_file_is_one_line_error_naming_the_file(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FlopsFileError, match=re.escape(words) if "\\" not in words else words) as err:
        read_flops_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_flops_file(tmp_path):
    with pytest.raises(FlopsFileError, match="cannot read"):
        read_flops_file(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\n", "aliases are refused"),  # the billion-laughs shape
        ("prefill: .inf\n", "prefill: must be a non-negative integer"),
        ("prefill: .nan\n", "prefill: must be a non-negative integer"),
        ("1: 5\n", "1: names must be non-empty text"),
        ("prefill: [\n", "not valid YAML"),
        ("- " * 3000 + "1\n", "nested too deeply"),
        ("- 1\n", "a FLOPs file must be a mapping"),
    ],
)
def test_bad_yaml_flops_file_is_one_line_error(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(FlopsFileError, match=words) as err:
        read_flops_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_non_utf8_flops_file_names_the_byte(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"prefill": "\xff"}')
    with pytest.raises(FlopsFileError, match="not UTF-8 text \\(byte 0xff at offset 13\\)"):
        read_flops_file(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"inputs": "x"}, "inputs: must be an object"),
        ({"inputs": {"batch": "two"}}, 'inputs.batch: must be an integer of at least 1, got "two"'),
        ({"inputs": {"new_tokens": -3}}, "inputs.new_tokens: must be a non-negative integer"),
        ({"inputs": {"image_size": [1024]}}, "inputs.image_size: must be a list of 2"),
        ({"shapes": {"crop_grid": "ab"}}, 'shapes.crop_grid: must be a list of 2, got "ab"'),
        ({"notes": 5}, "notes: must be a list, got 5"),
        ({"notes": [1]}, "notes\\[0\\]: must be text"),
        ({"stages": {"prefill": {"flops": 1, "notes": "x"}}}, "stages.prefill.notes: must be a list"),
        ({"stages": {"prefill": {"flops": 1, "bytes": -1}}}, "stages.prefill.bytes: must be a non-negative"),
        ({"stages": []}, "stages: must be a mapping of stage name to counts"),
        ({"model": 3}, "model: must be a name or"),
    ],
)
def test_analyzer_document_with_wrong_types_is_one_line_error(tmp_path, change, words):
    path = write_json(tmp_path / "a.json", ANALYSIS | change)
    with pytest.raises(FlopsFileError, match=words):
        read_flops_file(path)


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("prefill: 2e9\ndecode: {flops: 1E+3, bytes: 1_000}\n")
    assert by_stage(read_flops_file(path))["prefill"]["flops"] == 2_000_000_000
    assert by_stage(read_flops_file(path))["decode"]["flops"] == 1000
