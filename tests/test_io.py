"""lopt_graphs.io: atomic writes and strict-JSON values."""

from __future__ import annotations

import json
import math

import pytest

from lopt_graphs.io import atomic_write_text, finite_or_none


def test_finite_or_none_makes_strict_json():
    doc = {"a": math.inf, "b": [1.0, -math.inf, (math.nan, 2)], "c": {"d": 0.5, "e": "x", "f": None}, "g": 3}
    out = finite_or_none(doc)
    assert out == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": 0.5, "e": "x", "f": None}, "g": 3}
    json.dumps(out, allow_nan=False)  # raises ValueError on any non-finite float left
    with pytest.raises(ValueError):
        json.dumps(doc, allow_nan=False)
    assert doc["a"] == math.inf  # the input is not modified


def test_atomic_write_text_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    p.parent.mkdir()
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and [q.name for q in p.parent.iterdir()] == ["f.txt"]  # no temp file left
