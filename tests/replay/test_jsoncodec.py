"""The replay layer's JSON codec (orjson, the standard library per value it refuses): the same values back, the
callers' exact text, clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest

from stopbandit.errors import InputError
from stopbandit.replay import jsoncodec, spill, spill_format
from stopbandit.replay.jsoncodec import NotJSONError

VALUES = [
    {"len": 3.1, "lbin": "l4", "domain": "math"},
    {"é": "ü\u2028", "x": 1e-300, "big": 1.7976931348623157e308, "neg": -0.0, "i": 3},
    {"nested": {"a": [1, 2.5, None, True, "s"]}, "empty": {}, "list": []},
    {"np": np.float64(0.25)},  # a numpy float: the standard library's (orjson refuses it)
    {"huge": 2**70},  # over 64 bits: orjson refuses it
    {"k": "d", "r": {"request_key": "r-1", "probabilities": {"full": 0.25, "careful": 0.75}}},
    [1, "two", 3.0],
    "text",
    0.1,
    None,
]


@pytest.fixture
def codec():
    """The codec (orjson is a required dependency: there is no install without it)."""
    return "orjson"


@pytest.mark.parametrize("value", VALUES)
def test_dumps_loads_round_trip(codec, value):
    assert jsoncodec.loads(jsoncodec.dumps(value)) == value
    assert jsoncodec.loads(jsoncodec.dumps(value).encode()) == value


def test_each_path_writes_the_text_its_callers_stored_before():
    """Stored columns and spill files: orjson's compact text; the stdlib's ``json.dumps`` / compact lines."""
    value = {"é": 1, "p": [0.5, 0.25]}
    assert jsoncodec.dumps(value) == orjson.dumps(value).decode() == '{"é":1,"p":[0.5,0.25]}'
    assert jsoncodec.dumps_lines([value]) == b'{"\xc3\xa9":1,"p":[0.5,0.25]}\n'
    mixed = [value, {"np": np.float64(0.5)}]  # orjson refuses one line: the whole batch is the stdlib's
    assert jsoncodec.dumps_lines(mixed) == b'{"\\u00e9":1,"p":[0.5,0.25]}\n{"np":0.5}\n'
    assert jsoncodec.dumps({"np": np.float64(0.5)}) == '{"np": 0.5}'
    assert jsoncodec.dumps(None) == "null"


def test_orjson_writes(codec):
    value = {"é": 1}
    assert jsoncodec.dumps(value) == '{"é":1}'
    assert jsoncodec.accelerator() == f"orjson {orjson.__version__}"


def test_loads_accepts_the_standard_librarys_leniencies(codec):
    assert math.isnan(jsoncodec.loads('{"x": NaN}')["x"])
    assert jsoncodec.loads("1e400") == math.inf
    with pytest.raises(json.JSONDecodeError):
        jsoncodec.loads('{"x": ')


def test_loads_many_keeps_decoded_values_and_falls_back_per_value(codec):
    assert jsoncodec.loads_many(['{"a":1}', {"b": 2}, b'[1]', '{"c": NaN}'])[:3] == [{"a": 1}, {"b": 2}, [1]]
    assert jsoncodec.loads_many(iter(['{"a":1}'])) == [{"a": 1}]
    assert jsoncodec.loads_many([]) == []
    with pytest.raises(json.JSONDecodeError):
        jsoncodec.loads_many(['{"a":1}', "nope"])


def _circular():
    d: dict = {"ok": 1}
    d["self"] = d
    return d


@pytest.mark.parametrize(("value", "match"), [
    ({"features": {"x": {1, 2}}}, r"^features\.x is not JSON: Object of type set is not JSON serializable$"),
    ([1, [2, object()]], r"^\[1\]\[1\] is not JSON: Object of type object"),
    ({"probabilities": {(1, 2): 0.5}}, r"^probabilities\.<key \(1, 2\)> is not JSON: keys must be str"),
    (_circular(), r"^self is not JSON: Circular reference detected$"),
    (object(), r"^the value is not JSON"),
])
def test_an_unencodable_value_names_the_key(codec, value, match):
    with pytest.raises(NotJSONError, match=match) as info:
        jsoncodec.dumps(value)
    assert isinstance(info.value, InputError) and isinstance(info.value, TypeError)
    with pytest.raises(NotJSONError, match=match):
        jsoncodec.dumps_lines([value])


def test_dumps_lines_names_the_line_and_the_key(codec):
    with pytest.raises(NotJSONError, match=r"^line 2, r\.features\.x is not JSON"):
        jsoncodec.dumps_lines([{"k": "d", "r": {"a": 1}}, {"k": "d", "r": {"features": {"x": {1}}}}])


@pytest.mark.parametrize("row", [
    {"request_key": "r-1", "features": {"len": 3.0, "é": "ü"}, "probabilities": {"full": 1.0}},
    {"request_key": "r-2", "features": {"np": np.float64(0.5)}},
])
def test_spill_lines_round_trip(codec, row):
    blob = spill_format.encode([("d", row), ("o", {"decision_key": "r-1", "em": 1.0})])
    assert [spill_format.parse_line(x) for x in blob.splitlines(keepends=True)] == [
        ("d", row), ("o", {"decision_key": "r-1", "em": 1.0})]


def test_spill_encode_refuses_a_row_that_is_not_json_naming_the_key(codec):
    with pytest.raises(TypeError, match=r"r\.features\.x is not JSON"):
        spill_format.encode([("d", {"request_key": "p", "features": {"x": {1, 2}}})])


def test_spill_files_are_found_under_a_prefix_with_regex_characters(tmp_path):
    prefix = tmp_path / "s+b[1].x"
    for name in ("s+b[1].x.12-0123abcd.jsonl", "s+b[1].x.13-0123abce.jsonl.replay", "s+b[1].x.14-0123abcf.jsonl.lock",
                 "s+b[1].x.rejected.jsonl", "sxb[1].x.15-0123abcd.jsonl", "s+b[1].x.16-0123abcd.jsonl.bak",
                 "other.17-0123abcd.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in spill.spill_files(prefix)] == [
        "s+b[1].x.12-0123abcd.jsonl", "s+b[1].x.13-0123abce.jsonl", "s+b[1].x.14-0123abcf.jsonl"]
    assert spill.spill_files(tmp_path / "missing" / "s") == []
