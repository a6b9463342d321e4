"""shmbench.wire.strict_json: the one check and parser for data that crosses a trust boundary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shmbench.errors import ExperimentError
from shmbench.wire.strict_json import MAX_DEPTH, loads, strict_json


def test_strict_json_normalises_tuples_and_numpy():
    value = {
        "a": (1, 2),
        "b": np.int64(3),
        "c": np.float32(0.5),
        "d": np.array([1.5, 2.0]),
        "e": [None, True, "x", {"f": np.bool_(False)}],
    }
    out = strict_json(value)
    assert out == {"a": [1, 2], "b": 3, "c": 0.5, "d": [1.5, 2.0], "e": [None, True, "x", {"f": False}]}
    assert type(out["b"]) is int and type(out["e"][3]["f"]) is bool


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        float("inf"),
        {1: "x"},
        {"k": {2, 3}},
        b"bytes",
        object(),
        print,
        int,
        {"nested": [[np.array(["s"])]]},
        np.float64("-inf"),
    ],
)
def test_strict_json_refuses_non_json(bad):
    with pytest.raises(ExperimentError):
        strict_json({"key": bad})


def test_strict_json_names_the_offending_path():
    with pytest.raises(ExperimentError, match=r"config\['a'\]\[1\]\['b'\]"):
        strict_json({"a": [0, {"b": math.nan}]})


def test_strict_json_refuses_deep_nesting():
    value: list = []
    for _ in range(MAX_DEPTH + 5):
        value = [value]
    with pytest.raises(ExperimentError, match="deeper"):
        strict_json(value)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '{"a": 1, "a": 2}', '{"a": ', "[" * 100000])
def test_loads_refuses_non_strict_text(text):
    with pytest.raises(ExperimentError):
        loads(text)
