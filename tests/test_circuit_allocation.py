"""The allocation rule reproduces the published Llama-3.2-3B circuits, and its invariants hold."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from emojax.circuit import Circuit, allocate, build_circuit, literal_budget, mean_pairwise, transferred_budget
from emojax.model.config import ModelConfig

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "official" / "llama32_3b"
EMOTIONS = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")


def _official() -> Path:
    if not OFFICIAL.is_dir():
        pytest.skip("../shared/data/official is absent")
    return OFFICIAL


def _influence(root: Path) -> dict[tuple[str, str], np.ndarray]:
    table: dict[tuple[str, str], dict[int, float]] = {}
    with open(root / "sublayer" / "importance_mean_over_alpha.csv") as f:
        for row in csv.DictReader(f):
            table.setdefault((row["emotion"], row["kind"]), {})[int(row["layer"])] = float(row["I_final"])
    return {key: np.array([vals[l] for l in range(len(vals))]) for key, vals in table.items()}


def _head_scores(root: Path, emotion: str) -> np.ndarray:
    scores = np.zeros((28, 24))
    with open(root / "head_importance" / f"head_importance_{emotion}.csv") as f:
        for row in csv.DictReader(f):
            scores[int(row["layer"]), int(row["head"])] = float(row["mean_importance"])
    return scores


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_reproduces_published_circuit(emotion: str) -> None:
    root = _official()
    influence = _influence(root)
    published = json.loads((root / "global_circuit" / f"{emotion}.json").read_text())
    neuron_scores = np.zeros((28, 8192))  # neuron rankings are not published; only counts are checked
    circuit, record = build_circuit(emotion, influence[(emotion, "attention")], influence[(emotion, "mlp")],
                                    neuron_scores, _head_scores(root, emotion), literal_budget())
    want = Circuit.from_record(published)
    assert [len(n) for n in circuit.neurons] == [len(n) for n in want.neurons]
    assert circuit.heads == want.heads
    assert record["K_alloc"] == published["K_alloc"]
    assert record["min_per_layer"] == published["min_per_layer"]
    assert sum(map(len, circuit.neurons)) == 392 and sum(map(len, circuit.heads)) == 168


def test_published_head_overlap_matches_paper_scale() -> None:
    root = _official()
    heads = {e: Circuit.load(root / "global_circuit" / f"{e}.json").head_set() for e in EMOTIONS}
    assert 0.3 < mean_pairwise(heads) < 0.6  # the paper reports 0.454 for heads


def test_allocation_invariants_and_availability_backfill() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_layers = int(rng.integers(1, 40))
        influence = rng.normal(size=n_layers)
        available = int(rng.integers(1, 30))
        budget = int(rng.integers(0, n_layers * available + 1))
        alloc = allocate(influence, budget, int(rng.integers(0, 5)), available)
        assert all(0 <= c <= available for c in alloc.counts)
        assert sum(alloc.counts) + alloc.deficit == budget
        assert alloc.deficit == 0  # the budget always fits the population here


def test_all_zero_influence_is_uniform() -> None:
    alloc = allocate(np.zeros(4), 20, 2, 100)
    assert alloc.counts == (5, 5, 5, 5)


def test_transferred_budget_matches_method_table() -> None:
    def cfg(layers: int, heads: int) -> ModelConfig:
        return ModelConfig("llama", 10, 8, layers, heads, heads, 1, 4, 1e-5, 1e4, True, False)

    llama = transferred_budget(cfg(28, 24))
    assert (llama.neurons, llama.heads, llama.min_neurons, llama.min_heads) == (392, 168, 4, 2)
    smol = transferred_budget(cfg(30, 9))
    assert (smol.neurons, smol.heads, smol.min_neurons, smol.min_heads) == (420, 68, 4, 1)
