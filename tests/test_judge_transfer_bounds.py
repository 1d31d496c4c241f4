"""The offset ceiling against brute force, and --drop_training_sources' protocols."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from emojax.data.sev import EMOTIONS
from experiments.judge_training.cross_validation import PROTOCOLS, cohen_kappa, matches
from experiments.judge_training.data import LabelledText
from experiments.judge_training.transfer import protocols
from experiments.judge_training.transfer_bounds import (GOAL_FIGURES, match_margins, offset_ceiling,
                                                        threshold_offsets)

TRANSFER_FIGURES = Path(__file__).resolve().parents[1] / "experiments" / "judge_training" / "transfer_figures.json"


def _problem(n: int, seed: int, targets: tuple[str, ...] = EMOTIONS
             ) -> tuple[list[LabelledText], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = [LabelledText(f"t{i}", targets[i % len(targets)], int(rng.random() < 0.4), "none", "s", "rated",
                         fluent=int(rng.random() < 0.8)) for i in range(n)]
    logp = rng.normal(size=(n, 7)).astype(np.float32) * 2
    return rows, logp, (rng.random(n) < 0.85).astype(np.int64)


def test_the_margins_are_the_offsets_the_match_rule_accepts_above() -> None:
    rows, logp, _ = _problem(40, 0)
    margins = match_margins(logp.astype(np.float64), rows)
    for offset in (-1.0, 0.0, 0.7):
        assert matches(logp, rows, offset).tolist() == (margins < offset).astype(int).tolist()


def test_the_threshold_offsets_give_every_verdict_a_dense_grid_gives() -> None:
    margins = np.array([0.5, -1.0, 0.5, 2.25, 3.0])
    scanned = {tuple(margins < o) for o in threshold_offsets(margins)}
    dense = {tuple(margins < o) for o in np.arange(-5, 5, 0.001)}
    assert scanned == dense and len(scanned) == len(np.unique(margins)) + 1


@pytest.mark.parametrize("verdict", ["match", "fluent_match"])
def test_the_offset_ceiling_is_the_best_of_every_offset(verdict: str) -> None:
    rows, logp, fluent = _problem(60, 1)
    subsets = {"smollm2_all": np.ones(len(rows), bool)}
    ceiling = offset_ceiling(logp, rows, fluent, subsets, [("smollm2_all", verdict)])[f"smollm2_all/{verdict}"]
    truth = np.array([r.match for r in rows])
    gate = np.ones(len(rows), int)
    if verdict == "fluent_match":
        truth, gate = truth & np.array([r.fluent for r in rows]), fluent

    def scores(offset: float) -> tuple[float, float]:
        pred = matches(logp, rows, offset) & gate
        return cohen_kappa(truth, pred), float(np.mean(truth == pred))

    # no offset of a dense grid beats it (a gap between two margins may be narrower than the grid's step) ...
    grid = [scores(o) for o in np.arange(-12, 12, 0.01)]
    assert ceiling["kappa"] >= max(k for k, _ in grid) - 1e-4
    assert ceiling["agreement"] >= max(a for _, a in grid) - 1e-4
    # ... and the reported offsets reach the reported figures through the match rule itself
    assert scores(ceiling["kappa_offset"])[0] == pytest.approx(ceiling["kappa"], abs=1e-4)
    assert scores(ceiling["agreement_offset"])[1] == pytest.approx(ceiling["agreement"], abs=1e-4)
    assert ceiling["agreement_per_target_offsets"] >= ceiling["agreement"]


def test_per_target_offsets_reach_the_best_of_every_combination() -> None:
    rows, logp, fluent = _problem(30, 2, targets=("anger", "fear"))
    subsets = {"gemma_all": np.ones(len(rows), bool)}
    ceiling = offset_ceiling(logp, rows, fluent, subsets, [("gemma_all", "match")])["gemma_all/match"]
    truth = np.array([r.match for r in rows])
    margins = match_margins(logp.astype(np.float64), rows)
    anger = np.array([r.target == "anger" for r in rows])
    best = max(np.mean(np.where(anger, margins < a, margins < f) == truth)
               for a, f in itertools.product(np.arange(-12, 12, 0.05), repeat=2))
    assert ceiling["agreement_per_target_offsets"] == pytest.approx(best, abs=1e-4)


def test_untested_rows_and_missing_fluency_give_no_bound() -> None:
    rows, logp, _ = _problem(20, 3)
    logp[:, :] = np.nan  # the protocol tests none of these rows
    subsets = {"smollm2_all": np.ones(len(rows), bool)}
    assert offset_ceiling(logp, rows, None, subsets, [("smollm2_all", "match")]) == {}
    rows, logp, _ = _problem(20, 3)
    assert offset_ceiling(logp, rows, None, subsets, [("smollm2_all", "fluent_match")]) == {}


def test_the_figures_file_bounds_each_design_at_offset_zero() -> None:
    designs = json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["designs"]
    for design, figures in designs.items():
        for protocol, goals in GOAL_FIGURES.items():
            for subset, verdict in goals:
                at_zero = figures[protocol][subset][verdict]
                bound = figures[protocol]["offset_ceiling"][f"{subset}/{verdict}"]
                assert bound["n"] == at_zero["n"], (design, protocol, subset)
                assert bound["kappa"] >= at_zero["kappa"] and bound["agreement"] >= at_zero["agreement"]


def test_dropped_training_sources_leave_every_protocol_but_are_still_tested() -> None:
    dropped = protocols(["unprompted"])
    assert set(dropped) == set(PROTOCOLS)
    for protocol, (train, test) in dropped.items():
        assert train == PROTOCOLS[protocol][0] - {"unprompted"} and test == PROTOCOLS[protocol][1]
    assert protocols() == PROTOCOLS
    with pytest.raises(ValueError, match="--drop_training_sources: 'llama'"):
        protocols(["llama"])


def test_the_documented_offset_ceilings_are_the_figures_file() -> None:
    designs = json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["designs"]
    docs = (TRANSFER_FIGURES.parents[2] / "docs" / "judge.md").read_text(encoding="utf-8")
    for design, figures in designs.items():
        llama = figures["no_llama"]["offset_ceiling"]["llama_steered/match"]
        smollm2 = figures["no_smollm2"]["offset_ceiling"]["smollm2_all/fluent_match"]
        circuit = figures["no_smollm2"]["offset_ceiling"]["smollm2_circuit/match"]
        gemma = figures["no_gemma"]["offset_ceiling"]["gemma_all/fluent_match"]
        row = (f"| {design} | {llama['kappa']:.2f} ({100 * llama['agreement_at_kappa']:.1f}%); "
               f"{100 * llama['agreement']:.1f}% | {smollm2['kappa']:.2f}; "
               f"{100 * smollm2['agreement_per_target_offsets']:.1f}% | {100 * circuit['agreement']:.1f}%; "
               f"{100 * circuit['agreement_per_target_offsets']:.1f}% | {gemma['kappa']:.2f} |")
        assert row in docs, f"{row} is not in docs/judge.md"
