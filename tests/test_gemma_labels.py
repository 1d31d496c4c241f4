"""The careful reading of Gemma-3-270M's replies: the file parses into the judge trainer's rows, covers
each method's 144 test replies once, and gives the agreement figures its README and docs/judge.md state."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from experiments.judge_training.data import GEMMA_FILE, load_gemma


def _records() -> list[dict]:
    return [json.loads(line) for line in GEMMA_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_method_has_its_144_test_replies_once():
    rows, run_fluent, hashes = load_gemma()
    assert Counter(r.condition for r in rows) == {"prompting": 144, "steering": 144, "circuit": 144}
    assert {r.source for r in rows} == {"gemma"} and len(run_fluent) == len(rows)
    keys = [(record["condition"], record["key"]) for record in _records()]
    assert len(set(keys)) == len(keys)
    assert list(hashes) == [f"experiments/judge_training/labels/{GEMMA_FILE.name}"]


def test_the_second_reading_agrees_as_documented():
    twice = [r for r in _records() if "second_label" in r]
    assert len(twice) == 100

    def agreement(field):
        pick = (lambda label: label["match"] * label["fluent"]) if field == "fluent_match" else (lambda label: label[field])
        return np.mean([pick(r["label"]) == pick(r["second_label"]) for r in twice])

    assert (agreement("match"), agreement("fluent"), agreement("fluent_match")) == (0.95, 0.93, 0.98)


def test_the_reference_rates_are_the_documented_ones():
    fluent_match = Counter(r["condition"] for r in _records() if r["label"]["match"] and r["label"]["fluent"])
    assert fluent_match == {"prompting": 1, "steering": 29, "circuit": 15}
