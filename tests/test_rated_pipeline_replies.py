"""The careful reading of the two models' quick-run replies, of a sample of Gemma's standard run and of
a sample of SmolLM2's circuit variants (experiments/judge_training/labels/): each file covers its replies once, Gemma's quick file parses into
the judge trainer's rows, and every file gives the agreements and rates its README, docs/judge.md and
docs/results.md state."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from experiments.judge_training.data import GEMMA_FILE, SMOLLM2_QUICK_FILE, load_gemma

SMOLLM2_FILE = SMOLLM2_QUICK_FILE
GEMMA_STANDARD_FILE = GEMMA_FILE.with_name("gemma3_270m_standard_test_sample.jsonl")
# file: (agreement of the two readings on match, fluent, fluent_match; fluent matches per method)
DOCUMENTED = {GEMMA_FILE: ((0.95, 0.93, 0.98), {"prompting": 1, "steering": 29, "circuit": 15}),
              SMOLLM2_FILE: ((0.97, 1.0, 0.98), {"prompting": 6, "steering": 35, "circuit": 61})}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fluent_match(label: dict) -> int:
    return label["match"] * label["fluent"]


def _agreement(twice: list[dict], pick) -> float:
    """Fraction of the doubly read rows whose two readings agree on `pick(label)`."""
    return float(np.mean([pick(r["label"]) == pick(r["second_label"]) for r in twice]))


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda p: p.stem)
def test_every_method_has_its_144_test_replies_once(path):
    records = _records(path)
    assert Counter(r["condition"] for r in records) == {"prompting": 144, "steering": 144, "circuit": 144}
    keys = [(r["condition"], r["key"]) for r in records]
    assert len(set(keys)) == len(keys) and len({r["id"] for r in records}) == len(records)


def test_gemma_replies_load_as_the_third_judge_source():
    rows, run_fluent, hashes = load_gemma()
    assert len(rows) == 432 and {r.source for r in rows} == {"gemma"} and len(run_fluent) == len(rows)
    assert list(hashes) == [f"experiments/judge_training/labels/{GEMMA_FILE.name}"]


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda p: p.stem)
def test_the_second_reading_and_the_rates_are_the_documented_ones(path):
    records = _records(path)
    twice = [r for r in records if "second_label" in r]
    assert len(twice) == 100
    fields = {"match": lambda l: l["match"], "fluent": lambda l: l["fluent"], "fluent_match": _fluent_match}
    agreement = tuple(_agreement(twice, pick) for pick in fields.values())
    expected_agreement, expected_rates = DOCUMENTED[path]
    assert agreement == expected_agreement
    assert Counter(r["condition"] for r in records if r["label"]["match"] and r["label"]["fluent"]) == expected_rates


@pytest.mark.parametrize("path, random_matches, baseline_matches",
                         [(GEMMA_FILE.with_name("gemma3_270m_quick_test_controls.jsonl"), 5, 9),
                          (SMOLLM2_FILE.with_name("smollm2_quick_test_controls.jsonl"), 1, 0)], ids=["gemma", "smollm2"])
def test_the_controls_cover_every_draw_and_item_with_the_documented_matches(path, random_matches, baseline_matches):
    records = _records(path)
    random = [r for r in records if r["condition"] == "random_circuit"]
    baseline = [r for r in records if r["condition"] == "baseline"]
    assert Counter(r["draw"] for r in random) == {d: 18 for d in range(5)} and len(baseline) == 144
    fluent_match = lambda rows: sum(_fluent_match(r["label"]) for r in rows)
    assert (fluent_match(random), fluent_match(baseline)) == (random_matches, baseline_matches)


def test_the_gemma_standard_sample_gives_the_figures_docs_results_states():
    records = _records(GEMMA_STANDARD_FILE)
    by_condition = Counter(r["condition"] for r in records)
    assert by_condition == {"prompting": 144, "steering": 144, "circuit": 144, "baseline": 144}
    items = {condition: {r["key"]: r["emotion"] for r in records if r["condition"] == condition}
             for condition in by_condition}
    first = items["circuit"]  # the same 144 items, 24 per emotion, in every condition
    assert len(first) == 144 and set(Counter(first.values()).values()) == {24}
    assert all(mine == first for mine in items.values())
    fluent_matches = Counter(r["condition"] for r in records if _fluent_match(r["label"]))
    assert fluent_matches == {"prompting": 2, "steering": 24, "circuit": 8, "baseline": 7}
    second = [r for r in records if "second_label" in r]
    assert len(second) == 80 and round(100 * _agreement(second, _fluent_match), 1) == 96.2


def test_the_smollm2_variants_sample_gives_the_figures_docs_results_states():
    records = _records(GEMMA_FILE.with_name("smollm2_standard_variants_test_sample.jsonl"))
    assert Counter(r["condition"] for r in records) == {"per_emotion_rule": 96, "run_circuit": 96}
    items = {c: {r["key"]: r["emotion"] for r in records if r["condition"] == c} for c in ("per_emotion_rule", "run_circuit")}
    assert items["per_emotion_rule"] == items["run_circuit"] and set(Counter(items["run_circuit"].values()).values()) == {16}
    per_emotion = Counter((r["condition"], r["emotion"]) for r in records if _fluent_match(r["label"]))
    assert per_emotion[("per_emotion_rule", "happiness")] == 12 and per_emotion[("run_circuit", "happiness")] == 0
    assert Counter(c for c, _ in per_emotion.elements()) == {"per_emotion_rule": 46, "run_circuit": 35}
    outcome = {(r["condition"], r["key"]): _fluent_match(r["label"]) for r in records}
    won = sum(outcome[("per_emotion_rule", k)] > outcome[("run_circuit", k)] for k in items["run_circuit"])
    lost = sum(outcome[("per_emotion_rule", k)] < outcome[("run_circuit", k)] for k in items["run_circuit"])
    assert (won, lost) == (15, 4)
    second = [r for r in records if "second_label" in r]
    assert len(second) == 48 and round(100 * _agreement(second, _fluent_match), 1) == 97.9


def test_the_variant_choice_sample_gives_the_figures_docs_results_states():
    choice = _records(GEMMA_FILE.with_name("smollm2_standard_variant_choice_test_sample.jsonl"))
    earlier = _records(GEMMA_FILE.with_name("smollm2_standard_variants_test_sample.jsonl"))
    assert Counter((r["condition"], r["emotion"]) for r in choice) == {
        ("variant_choice", "anger"): 16, ("variant_choice", "surprise"): 16, ("variant_choice", "fear"): 16,
        ("run_circuit", "anger"): 16, ("run_circuit", "surprise"): 16}
    reread = [r for r in choice if r["condition"] == "run_circuit"]
    assert sum(_fluent_match(r["label"]) == _fluent_match(r["earlier_label"]) for r in reread) == 27
    # The choice's replies: this file's 48, and the earlier file's for sadness, happiness and disgust.
    outcome = {r["key"]: _fluent_match(r["label"]) for r in choice if r["condition"] == "variant_choice"}
    outcome.update({r["key"]: _fluent_match(r["label"]) for r in earlier
                    if (r["emotion"], r["condition"]) in {("sadness", "run_circuit"), ("disgust", "run_circuit"),
                                                          ("happiness", "per_emotion_rule")}})
    circuit = {r["key"]: _fluent_match(r["label"]) for r in earlier if r["condition"] == "run_circuit"}
    circuit_reread = {**circuit, **{r["key"]: _fluent_match(r["label"]) for r in reread}}
    assert len(outcome) == len(circuit) == 96
    assert (sum(outcome.values()), sum(circuit.values()), sum(circuit_reread.values())) == (45, 35, 30)
    paired = [(sum(outcome[k] > c[k] for k in c), sum(outcome[k] < c[k] for k in c)) for c in (circuit_reread, circuit)]
    assert paired == [(15, 0), (14, 4)]
