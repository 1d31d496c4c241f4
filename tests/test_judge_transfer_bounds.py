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
from experiments.judge_training.transfer_bounds import (GOAL_FIGURES, OFFSET_LIMIT, kappa_bound, match_margins,
                                                        offset_ceiling, verdict_scan)

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


def test_the_scan_gives_every_verdict_an_offset_within_the_limit_gives() -> None:
    margins = np.array([0.5, -1.0, 0.5, 2.25, 3.0, 1e9, -1e9, np.nextafter(0.5, 1.0)])
    scanned = [accepted for _, accepted in verdict_scan(margins)]
    dense = {tuple(margins < o) for o in (*np.arange(-OFFSET_LIMIT, OFFSET_LIMIT, 0.001), OFFSET_LIMIT)}
    # every set a dense grid reaches, plus the one between 0.5 and the next float, which no grid step reaches;
    # -1e9 and 1e9 lie outside the limit: always and never accepted
    assert dense <= {tuple(a) for a in scanned} and len({tuple(a) for a in scanned} - dense) == 1
    assert len({tuple(a) for a in scanned}) == len(scanned) == 6
    assert not any(a[5] for a in scanned) and all(a[6] for a in scanned)
    # the reported offset accepts what the scan says it does
    assert all(((margins < offset) == accepted).all() for offset, accepted in verdict_scan(margins)
               if offset != -OFFSET_LIMIT)


@pytest.mark.parametrize("verdict", ["match", "fluent_match"])
def test_the_offset_ceiling_is_the_best_of_every_offset(verdict: str) -> None:
    rows, logp, fluent = _problem(60, 1)
    subsets = {"smollm2_all": np.ones(len(rows), bool)}
    folds = np.arange(len(rows)) % 3
    ceiling = offset_ceiling(logp, rows, fluent, subsets, [("smollm2_all", verdict)], folds)[f"smollm2_all/{verdict}"]
    truth = np.array([r.match for r in rows])
    gate = np.ones(len(rows), int)
    if verdict == "fluent_match":
        truth, gate = truth & np.array([r.fluent for r in rows]), fluent

    def scores(offset: float, mask: np.ndarray = np.ones(len(rows), bool)) -> tuple[float, int]:
        pred = matches(logp, rows, offset) & gate
        return cohen_kappa(truth, pred), int(np.sum((truth == pred)[mask]))

    # no offset of a dense grid beats it (a gap between two margins may be narrower than the grid's step) ...
    grid = np.arange(-12, 12, 0.01)
    assert ceiling["kappa"] >= max(scores(o)[0] for o in grid) - 1e-4
    assert ceiling["agreement"] >= max(scores(o)[1] for o in grid) / len(rows) - 1e-4
    # ... and the reported offsets reach the reported figures through the match rule itself
    assert scores(ceiling["kappa_offset"])[0] == pytest.approx(ceiling["kappa"], abs=1e-4)
    assert scores(ceiling["agreement_offset"])[1] / len(rows) == pytest.approx(ceiling["agreement"], abs=1e-4)
    # an offset per fold: the folds' best agreements add up, and the kappa bound holds for the best such verdicts
    per_fold = sum(max(scores(o, folds == k)[1] for o in grid) for k in range(3)) / len(rows)
    assert ceiling["agreement_per_fold_offsets"] >= per_fold - 1e-4
    assert ceiling["agreement"] <= ceiling["agreement_per_fold_offsets"] <= ceiling["agreement_per_fold_target_offsets"]
    assert ceiling["kappa"] <= ceiling["kappa_bound_per_fold_offsets"] + 1e-4


def test_per_fold_and_target_offsets_reach_the_best_of_every_combination() -> None:
    rows, logp, fluent = _problem(30, 2, targets=("anger", "fear"))
    subsets = {"gemma_all": np.ones(len(rows), bool)}
    folds = np.zeros(len(rows), int)
    ceiling = offset_ceiling(logp, rows, fluent, subsets, [("gemma_all", "match")], folds)["gemma_all/match"]
    truth = np.array([r.match for r in rows])
    margins = match_margins(logp.astype(np.float64), rows)
    anger = np.array([r.target == "anger" for r in rows])
    best = max(np.mean(np.where(anger, margins < a, margins < f) == truth)
               for a, f in itertools.product(np.arange(-12, 12, 0.05), repeat=2))
    assert ceiling["agreement_per_fold_target_offsets"] == pytest.approx(best, abs=1e-4)


def test_the_kappa_bound_holds_for_every_verdict_at_that_agreement() -> None:
    rng = np.random.default_rng(5)
    for rate in (0.1, 0.5, 0.9):
        truth = (rng.random(200) < rate).astype(int)
        for flips in (0, 5, 20, 60):
            for _ in range(20):
                pred = truth.copy()
                pred[rng.choice(200, flips, replace=False)] ^= 1
                agreement = float(np.mean(pred == truth))
                assert cohen_kappa(truth, pred) <= kappa_bound(agreement, float(truth.mean())) + 1e-9
    # reached by the verdicts that err only towards the far side of 1/2
    truth = np.array([1] * 20 + [0] * 80)
    pred = truth.copy()
    pred[20:30] = 1
    assert cohen_kappa(truth, pred) == pytest.approx(kappa_bound(0.9, 0.2))


def test_untested_rows_and_missing_fluency_give_no_bound() -> None:
    rows, logp, _ = _problem(20, 3)
    folds = np.zeros(len(rows), int)
    subsets = {"smollm2_all": np.ones(len(rows), bool)}
    assert offset_ceiling(np.full_like(logp, np.nan), rows, None, subsets, [("smollm2_all", "match")], folds) == {}
    assert offset_ceiling(logp, rows, None, subsets, [("smollm2_all", "fluent_match")], folds) == {}
    # rows the protocol does not test are left out, not read as verdicts
    half = logp.copy()
    half[::2] = np.nan
    ceiling = offset_ceiling(half, rows, None, subsets, [("smollm2_all", "match")], folds)["smollm2_all/match"]
    alone = offset_ceiling(logp[1::2], rows[1::2], None, {"smollm2_all": np.ones(10, bool)},
                           [("smollm2_all", "match")], folds[1::2])["smollm2_all/match"]
    assert ceiling == alone and ceiling["n"] == 10


@pytest.mark.parametrize("name", ["transfer_figures.json", "transfer_figures_careful.json"])
def test_the_figures_files_bound_each_design_at_offset_zero(name: str) -> None:
    designs = json.loads(TRANSFER_FIGURES.with_name(name).read_text(encoding="utf-8"))["designs"]
    for design, figures in designs.items():
        for protocol, goals in GOAL_FIGURES.items():
            for subset, verdict in goals:
                at_zero = figures[protocol][subset][verdict]
                bound = figures[protocol]["offset_ceiling"][f"{subset}/{verdict}"]
                assert bound["n"] == at_zero["n"], (design, protocol, subset)
                assert bound["kappa"] >= at_zero["kappa"] and bound["agreement"] >= at_zero["agreement"]
        careful = figures["no_llama"]["offset_ceiling_careful"]["llama_steered/match"]
        assert careful["kappa"] >= figures["no_llama"]["llama_steered_careful"]["match"]["kappa"]


def test_dropped_training_sources_leave_every_protocol_but_are_still_tested() -> None:
    dropped = protocols(["unprompted"])
    assert set(dropped) == set(PROTOCOLS)
    for protocol, (train, test) in dropped.items():
        assert train == PROTOCOLS[protocol][0] - {"unprompted"} and test == PROTOCOLS[protocol][1]
    assert protocols() == PROTOCOLS
    with pytest.raises(ValueError, match="--drop_training_sources: 'llama'"):
        protocols(["llama"])


@pytest.mark.parametrize("name", ["transfer_figures.json", "transfer_figures_careful.json"])
def test_the_documented_offset_ceilings_are_the_figures_file(name: str) -> None:
    designs = json.loads(TRANSFER_FIGURES.with_name(name).read_text(encoding="utf-8"))["designs"]
    docs = (TRANSFER_FIGURES.parents[2] / "docs" / "judge.md").read_text(encoding="utf-8")
    for design, figures in designs.items():
        llama = figures["no_llama"]["offset_ceiling"]["llama_steered/match"]
        smollm2 = figures["no_smollm2"]["offset_ceiling"]["smollm2_all/fluent_match"]
        circuit = figures["no_smollm2"]["offset_ceiling"]["smollm2_circuit/match"]
        gemma = figures["no_gemma"]["offset_ceiling"]["gemma_all/fluent_match"]
        row = (f"| {design} | {llama['kappa']:.2f} ({100 * llama['agreement_at_kappa']:.1f}%); "
               f"{100 * llama['agreement_per_fold_offsets']:.1f}% | {smollm2['kappa']:.2f}; "
               f"{smollm2['kappa_bound_per_fold_offsets']:.2f} | {100 * circuit['agreement']:.1f}%; "
               f"{100 * circuit['agreement_per_fold_offsets']:.1f}%; "
               f"{100 * circuit['agreement_per_fold_target_offsets']:.1f}% | {gemma['kappa']:.2f}; "
               f"{gemma['kappa_bound_per_fold_offsets']:.2f} |")
        assert row in docs, f"{row} is not in docs/judge.md"


def test_the_taught_offset_is_the_grid_offset_with_the_best_mean_kappa_of_its_sources() -> None:
    from experiments.judge_training.cross_validation import OFFSET_GRID, taught_offset

    rows, logp, _ = _problem(90, 7)
    rng = np.random.default_rng(8)
    # what a row was taught (its class is its target) is independent of its reference's `match` here
    taught = (rng.random(len(rows)) < 0.3).astype(int)
    rows = [LabelledText(r.text, r.target, 1 - t, r.target if t else "none", r.scenario,
                         ("unprompted", "gemma", "prompted")[i % 3]) for i, (r, t) in enumerate(zip(rows, taught))]
    chosen = taught_offset(logp, rows, ("unprompted", "gemma", "rated"))  # no rated row: two sources count
    source = np.array([r.source for r in rows])

    def score(offset: float) -> float:
        pred = matches(logp, rows, offset)
        return float(np.mean([cohen_kappa(taught[source == s], pred[source == s]) for s in ("unprompted", "gemma")]))

    best = max(round(score(o), 6) for o in OFFSET_GRID)
    assert chosen in OFFSET_GRID and round(score(chosen), 6) == best
    assert min(abs(o) for o in OFFSET_GRID if round(score(o), 6) == best) == abs(chosen)


def test_an_inner_split_predicts_one_other_fold_of_the_scored_training_sources() -> None:
    from experiments.judge_training.transfer import inner_splits

    folds = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    source = np.array(["unprompted", "rated", "gemma", "prompted", "neutral", "rated", "gemma", "unprompted", "rated"])
    splits = inner_splits(folds, source, {"unprompted", "rated", "prompted", "neutral"})
    assert [(k, j) for k, j, _ in splits] == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    for k, j, scored in splits:
        assert (folds[scored] == j).all() and set(source[scored]) <= {"unprompted", "rated"}
    assert dict(((k, j), s.tolist()) for k, j, s in splits)[(0, 1)] == [1, 7]


def test_the_documented_tuned_offsets_are_their_figures_files() -> None:
    docs = (TRANSFER_FIGURES.parents[2] / "docs" / "judge.md").read_text(encoding="utf-8")
    for labels, name in (("gpt-4o-mini", "transfer_figures_tuned.json"),
                         ("careful", "transfer_figures_careful_tuned.json")):
        figures = json.loads(TRANSFER_FIGURES.with_name(name).read_text(encoding="utf-8"))
        assert figures["protocol"].endswith("match offset tuned per fold model (--tune_offset)")
        assert figures["llama_steered_labels"] == labels
        for design, v in figures["designs"].items():
            llama = v["no_llama"]["llama_steered"]["match"]
            smollm2 = v["no_smollm2"]["smollm2_all"]["fluent_match"]
            circuit = v["no_smollm2"]["smollm2_circuit"]["match"]
            gemma = v["no_gemma"]["gemma_all"]["fluent_match"]
            neutral = max(v[p]["neutral_false_match"]["max"] for p in ("no_llama", "no_smollm2", "no_gemma"))
            offsets = v["no_smollm2"]["tuned_offsets"]
            assert len(offsets) == 5 and all(-3.0 <= o <= 3.0 for o in offsets)
            row = (f"| {design} | {labels} | {100 * llama['agreement']:.1f}% ({llama['kappa']:.2f}) | "
                   f"{100 * smollm2['agreement']:.1f}% ({smollm2['kappa']:.2f}) | {100 * circuit['agreement']:.1f}% | "
                   f"{100 * gemma['agreement']:.1f}% ({gemma['kappa']:.2f}) | {100 * neutral:.1f}% | "
                   f"{min(offsets):+.1f} to {max(offsets):+.1f} |")
            assert row in docs, f"{row} is not in docs/judge.md"
            # a tuned figure never beats the bound of an offset chosen with the test labels
            bound = v["no_smollm2"]["offset_ceiling"]["smollm2_circuit/match"]["agreement_per_fold_offsets"]
            assert circuit["agreement"] <= bound + 1e-9
