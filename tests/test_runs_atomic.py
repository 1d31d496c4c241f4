"""Atomic writers: complete files or nothing, reproducible bytes, earlier outputs survive a full disk."""
from __future__ import annotations

import csv
import errno
import json
import os

import numpy as np
import pytest

from emojax.runs import atomic
from emojax.runs.atomic import write_csv, write_json, write_jsonl, write_npz, write_text
from emojax.runs.validate import read_npz


def _no_temporaries(directory) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_round_trips(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64),
              "names": np.array(["anger", "fear"])}
    write_npz(tmp_path / "a.npz", arrays, meta={"model_hash": "abc"})
    got, meta = read_npz(tmp_path / "a.npz")
    assert meta == {"model_hash": "abc"}
    assert got.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(got[key], arrays[key])
        assert got[key].dtype == arrays[key].dtype
    with np.load(tmp_path / "a.npz") as plain:  # a standard npz for any reader
        np.testing.assert_array_equal(plain["a"], arrays["a"])

    value = {"x": np.float32(0.1), "y": [1, 2.5], "z": np.arange(3), "text": "é"}
    write_json(tmp_path / "v.json", value)
    assert json.loads((tmp_path / "v.json").read_text(encoding="utf-8")) == {
        "x": float(np.float32(0.1)), "y": [1, 2.5], "z": [0, 1, 2], "text": "é"}

    records = [{"i": 0, "s": 0.1}, {"i": 1, "s": 1e-300}]
    write_jsonl(tmp_path / "r.jsonl", records)
    lines = (tmp_path / "r.jsonl").read_text().split("\n")
    assert lines[-1] == "" and [json.loads(l) for l in lines[:-1]] == records

    write_csv(tmp_path / "t.csv", [{"layer": 0, "score": 0.1}, {"layer": 1, "score": 2 / 3}])
    with open(tmp_path / "t.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[1]["score"]) == 2 / 3  # repr round-trips floats exactly

    write_text(tmp_path / "n.txt", "hello\n")
    assert (tmp_path / "n.txt").read_text() == "hello\n"
    assert _no_temporaries(tmp_path)


def test_same_values_give_same_bytes(tmp_path):
    arrays = {"x": np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)}
    write_npz(tmp_path / "1.npz", arrays, meta={"k": 1})
    os.utime(tmp_path / "1.npz", (0, 0))
    write_npz(tmp_path / "2.npz", arrays, meta={"k": 1})
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()


def test_csv_rows_with_wrong_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="row 1"):
        write_csv(tmp_path / "t.csv", [{"a": 1}, {"b": 2}])
    assert not (tmp_path / "t.csv").exists() and _no_temporaries(tmp_path)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "text", "npz"])
def test_full_disk_midway_keeps_the_earlier_file(tmp_path, monkeypatch, kind):
    path = tmp_path / f"out.{kind}"
    writers = {
        "json": lambda v: write_json(path, {"v": v, "pad": list(range(1000))}),
        "jsonl": lambda v: write_jsonl(path, [{"v": v, "i": i} for i in range(1000)]),
        "csv": lambda v: write_csv(path, [{"v": v, "i": i} for i in range(1000)]),
        "text": lambda v: write_text(path, f"{v}\n" * 1000),
        "npz": lambda v: write_npz(path, {"v": np.full(1000, v), "w": np.arange(10)}),
    }
    writers[kind](1)
    before = path.read_bytes()

    if kind == "npz":
        # Fail after the first array member is written: a half-built zip must not replace the file.
        real_write_array = np.lib.format.write_array
        calls = []

        def write_array_then_fail(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                _disk_full()
            real_write_array(*args, **kwargs)

        monkeypatch.setattr(np.lib.format, "write_array", write_array_then_fail)
    else:
        # Let the data reach the temporary file, then fail when it is made durable.
        monkeypatch.setattr(atomic.os, "fsync", _disk_full)

    with pytest.raises(OSError, match="No space left"):
        writers[kind](2)
    assert path.read_bytes() == before
    assert _no_temporaries(tmp_path)


def test_unserialisable_value_keeps_the_earlier_file(tmp_path):
    write_json(tmp_path / "v.json", {"ok": 1})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(tmp_path / "v.json", {"bad": object()})
    assert json.loads((tmp_path / "v.json").read_text()) == {"ok": 1}
    assert _no_temporaries(tmp_path)


def test_interrupted_write_never_shows_a_partial_file(tmp_path):
    path = tmp_path / "big.jsonl"

    def records():
        yield {"i": 0}
        assert not path.exists()  # nothing under the final name while writing
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(path, records())
    assert not path.exists() and _no_temporaries(tmp_path)


def test_npz_refuses_reserved_name(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        write_npz(tmp_path / "a.npz", {"__meta__": np.zeros(1)})
