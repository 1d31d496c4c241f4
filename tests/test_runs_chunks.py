"""Chunked jobs: skip finished chunks, refuse changed inputs, return what an uninterrupted run returns."""
from __future__ import annotations

import json

import numpy as np
import pytest

from emojax.runs import ChunkedJob, InputError


def features(start: int, stop: int) -> dict[str, np.ndarray]:
    items = np.arange(start, stop)
    x = np.sin(items[:, None] * np.arange(1, 6)[None, :] / 7.0).astype(np.float32)
    return {"x": x, "norm": np.sqrt((x * x).sum(axis=1)), "item": items}


class Interrupt(Exception):
    pass


def crashing_after(n_chunks: int, compute):
    calls = []

    def wrapped(start: int, stop: int):
        if len(calls) == n_chunks:
            raise Interrupt
        calls.append((start, stop))
        return compute(start, stop)
    wrapped.calls = calls
    return wrapped


def test_uninterrupted_run_concatenates_in_order(tmp_path):
    result = ChunkedJob(tmp_path, "f", 10, 3, "v1").run(features)
    expected = features(0, 10)
    assert result.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(result[key], expected[key])
    index = json.loads((tmp_path / "f" / "index.json").read_text())
    assert [(c["start"], c["stop"]) for c in index["chunks"].values()] == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_resume_skips_done_chunks_and_matches_uninterrupted(tmp_path):
    reference = ChunkedJob(tmp_path / "ref", "f", 11, 2, "v1").run(features)
    first = crashing_after(3, features)
    with pytest.raises(Interrupt):
        ChunkedJob(tmp_path / "run", "f", 11, 2, "v1").run(first)
    second = crashing_after(99, features)
    resumed = ChunkedJob(tmp_path / "run", "f", 11, 2, "v1").run(second)
    assert first.calls == [(0, 2), (2, 4), (4, 6)]
    assert second.calls == [(6, 8), (8, 10), (10, 11)]
    for key in reference:
        assert resumed[key].tobytes() == reference[key].tobytes()
    for ref_file in sorted((tmp_path / "ref" / "f").iterdir()):
        assert (tmp_path / "run" / "f" / ref_file.name).read_bytes() == ref_file.read_bytes()


def test_records_resume(tmp_path):
    def records(start, stop):
        return [{"item": i, "score": i / 3, "tag": ["a", i]} for i in range(start, stop)]
    first = crashing_after(2, records)
    with pytest.raises(Interrupt):
        ChunkedJob(tmp_path, "r", 7, 3, {"seed": 1}).run(first)
    result = ChunkedJob(tmp_path, "r", 7, 3, {"seed": 1}).run(records)
    assert result == records(0, 7)


@pytest.mark.parametrize("change", [{"fingerprint": "v2"}, {"n_items": 12}, {"chunk_size": 4}])
def test_changed_inputs_are_refused(tmp_path, change):
    with pytest.raises(Interrupt):
        ChunkedJob(tmp_path, "f", 11, 2, "v1").run(crashing_after(1, features))
    spec = {"n_items": 11, "chunk_size": 2, "fingerprint": "v1", **change}
    with pytest.raises(InputError) as err:
        ChunkedJob(tmp_path, "f", spec["n_items"], spec["chunk_size"], spec["fingerprint"])
    key = next(iter(change))
    assert f"started with {key}=" in str(err.value) and "index.json" in str(err.value)


def test_corrupted_or_unindexed_chunk_is_recomputed(tmp_path):
    job = ChunkedJob(tmp_path, "f", 6, 2, "v1")
    reference = job.run(features)
    (tmp_path / "f" / "chunk_000001.npz").write_bytes(b"garbage")
    index = json.loads((tmp_path / "f" / "index.json").read_text())
    del index["chunks"]["2"]  # as if killed between writing the chunk and the index
    (tmp_path / "f" / "index.json").write_text(json.dumps(index))
    again = crashing_after(99, features)
    result = ChunkedJob(tmp_path, "f", 6, 2, "v1").run(again)
    assert again.calls == [(2, 4), (4, 6)]
    for key in reference:
        np.testing.assert_array_equal(result[key], reference[key])


def test_chunk_layout_must_stay_the_same(tmp_path):
    def drifting(start, stop):
        dtype = np.float32 if start == 0 else np.float64
        return {"x": np.zeros(stop - start, dtype)}
    with pytest.raises(ValueError, match="chunk 1 returned arrays"):
        ChunkedJob(tmp_path, "f", 4, 2, "v1").run(drifting)


def test_bad_results_are_refused(tmp_path):
    with pytest.raises(TypeError, match="dict of arrays or a list of records"):
        ChunkedJob(tmp_path, "a", 2, 1, "v").run(lambda s, e: (s, e))
    with pytest.raises(ValueError, match="leading item axis"):
        ChunkedJob(tmp_path, "b", 2, 1, "v").run(lambda s, e: {"x": np.float32(1)})


def test_empty_job(tmp_path):
    assert ChunkedJob(tmp_path, "f", 0, 4, "v").run(features) == {}
