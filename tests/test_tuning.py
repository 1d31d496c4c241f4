"""The tuning protocol's grid search: extension at edges, stopping at an interior optimum, ties,
per-emotion curves, and the fluent objective read from records."""
from __future__ import annotations

import math

import pytest

from emojax.data import EMOTIONS, groups, load_dataset
from emojax.runs import InputError
from emojax.stages import tuning


def peaked(peak: float):
    """A single-peaked objective in log(dose), with its maximum at `peak`; records every call."""
    calls = []

    def evaluate(doses):
        calls.append(list(doses))
        return {d: {"overall": 1.0 / (1.0 + abs(math.log(d / peak)))} for d in doses}

    return evaluate, calls


def test_search_stops_at_an_interior_optimum_of_the_first_grid():
    evaluate, calls = peaked(1.0)
    result = tuning.search(evaluate, 1.0, tuning.SearchRule())
    assert calls == [[0.5, 1.0, 2.0]]
    assert result["best"] == {"overall": 1.0} and result["bracketed"] == {"overall": True}
    assert result["extensions"] == 0


def test_search_extends_upwards_until_the_optimum_is_interior():
    evaluate, calls = peaked(4.0)
    result = tuning.search(evaluate, 1.0, tuning.SearchRule(max_extensions=5))
    assert calls == [[0.5, 1.0, 2.0], [4.0], [8.0]]   # 4 is best once 8 is known: stop there
    assert result["grid"] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert result["best"]["overall"] == 4.0 and result["bracketed"]["overall"]


def test_search_extends_downwards_and_respects_the_cap():
    evaluate, calls = peaked(0.01)
    result = tuning.search(evaluate, 3.4641, tuning.SearchRule(max_extensions=2))
    assert calls == [[1.7321, 3.4641, 6.9282], [0.866], [0.433]]
    assert result["best"]["overall"] == 0.433 and not result["bracketed"]["overall"]
    assert result["extensions"] == 2


def test_ties_go_to_the_reference_then_the_smaller_dose():
    assert tuning.choose({0.5: 0.2, 1.0: 0.2, 2.0: 0.2}, 1.0) == 1.0
    assert tuning.choose({0.5: 0.2, 2.0: 0.2}, 1.0) == 0.5
    assert tuning.choose({0.5: None, 2.0: 0.1}, 1.0) == 2.0
    flat = lambda doses: {d: {"overall": 0.0} for d in doses}  # noqa: E731
    assert tuning.search(flat, 1.0, tuning.SearchRule())["grid"] == [0.5, 1.0, 2.0]  # nothing to chase


def test_per_emotion_curves_are_each_bracketed():
    peaks = dict(zip(EMOTIONS, (1.0, 4.0, 0.25, 1.0, 1.0, 1.0)))

    def evaluate(doses):
        return {d: {e: 1.0 / (1.0 + abs(math.log(d / p))) for e, p in peaks.items()} for d in doses}

    result = tuning.search(evaluate, 1.0, tuning.SearchRule(), tuned=EMOTIONS)
    assert result["grid"] == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert result["best"] == peaks and all(result["bracketed"].values())


def record(emotion: str, match: int, fluent: int | None) -> dict:
    judge = {"match": match, "reason": "", "error": None}
    if fluent is not None:
        judge.update(fluent=fluent, fluent_match=int(match and fluent))
    return {"key": f"k_{emotion}_{match}_{fluent}", "emotion": emotion, "valence": "positive", "judge": judge}


def test_measures_read_the_fluency_fields():
    records = [record("anger", 1, 1), record("anger", 1, 0), record("fear", 0, 1), record("fear", 0, 0)]
    m = tuning.measures(records)
    assert m["fluent_accuracy"]["overall"] == 0.25 and m["accuracy"]["overall"] == 0.5
    assert m["fluent_fraction"]["fear"] == 0.5 and m["fluent_accuracy"]["anger"] == 0.5
    assert m["accuracy"]["sadness"] is None


def test_records_without_fluency_fields_are_an_error_not_plain_match():
    with pytest.raises(InputError, match="no judge.fluent_match"):
        tuning.measures([record("anger", 1, None)])


def test_spread_groups_spans_the_split():
    train = load_dataset("bundled:train")[:16]
    chosen = tuning.spread_groups(train, 4)
    everything = groups(train)
    assert [g.key for g in chosen] == [everything[i].key for i in (0, 16, 31, 47)]
    assert len(tuning.spread_groups(train, None)) == len(everything) == 48
