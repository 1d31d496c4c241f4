"""Cross-validation by scenario for the offline judge and the fluency rule: folds, agreement figures and
the match threshold chosen on training data only.

Every figure is computed on folds held out by scenario (skeleton_id): all texts of a scenario, whatever
their source, sit in the same fold. The judge's one tuned number, the offset added to log p(target) in the
match rule, is chosen in each outer fold by an inner cross-validation of that fold's training part, so no
held-out text influences its own verdict.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from emojax.data.sev import EMOTIONS
from emojax.judge.offline import match_rule
from experiments.judge_training.data import CONDITIONS, LabelledText

# Candidate offsets of the match rule (log-probability units): negative rejects more, positive accepts more.
OFFSET_GRID = tuple(float(x) for x in np.round(np.arange(-3.0, 3.001, 0.1), 2))
# `smollm2_extra` and `gemma_extra` (data.load_extra_readings) are each small model's other careful readings:
# trained on wherever their model is, never tested.
EVERY_SOURCE = {"prompted", "unprompted", "rated", "gemma", "neutral", "smollm2_extra", "gemma_extra"}
# Leave one model's replies out: protocol -> (training sources, tested sources).
PROTOCOLS = {"no_llama": (EVERY_SOURCE - {"prompted", "unprompted"}, {"prompted", "unprompted", "neutral"}),
             "no_smollm2": (EVERY_SOURCE - {"rated", "smollm2_extra"}, {"rated", "neutral"}),
             "no_gemma": (EVERY_SOURCE - {"gemma", "gemma_extra"}, {"gemma", "neutral"}),
             "all": (EVERY_SOURCE, EVERY_SOURCE - {"smollm2_extra", "gemma_extra"})}


def scenario_folds(scenarios: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Fold index of each row; all rows of one scenario share a fold."""
    unique = sorted(set(scenarios))
    if len(unique) < k:
        raise ValueError(f"{len(unique)} scenarios cannot fill {k} folds")
    np.random.default_rng(seed).shuffle(unique)
    fold_of = {s: i % k for i, s in enumerate(unique)}
    return np.array([fold_of[s] for s in scenarios])


def cohen_kappa(truth: np.ndarray, pred: np.ndarray) -> float:
    truth, pred = np.asarray(truth, float), np.asarray(pred, float)
    if len(truth) == 0:
        return float("nan")
    observed = float(np.mean(truth == pred))
    p_t, p_p = truth.mean(), pred.mean()
    chance = float(p_t * p_p + (1 - p_t) * (1 - p_p))
    return 0.0 if chance == 1.0 else (observed - chance) / (1 - chance)


def binary_figures(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Agreement, Cohen's kappa and the counts behind them."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    return {"n": int(len(truth)), "agreement": round(float(np.mean(truth == pred)), 4) if len(truth) else None,
            "kappa": round(cohen_kappa(truth, pred), 4) if len(truth) else None,
            "reference_positives": int(np.sum(truth == 1)), "predicted_positives": int(np.sum(pred == 1)),
            "both_positive": int(np.sum((truth == 1) & (pred == 1)))}


def target_indices(rows: Sequence[LabelledText]) -> np.ndarray:
    """Index of each row's target emotion (0 for a neutral sentence, which is never scored as a match)."""
    return np.array([EMOTIONS.index(r.target) if r.target else 0 for r in rows])


def matches(logp: np.ndarray, rows: Sequence[LabelledText], offset: float) -> np.ndarray:
    """The match rule with one offset for every target."""
    return match_rule(logp, target_indices(rows), np.full(len(EMOTIONS), offset, np.float32))


SELECTION_SOURCES = ("unprompted", "rated")


def selection_score(logp: np.ndarray, rows: Sequence[LabelledText], offset: float,
                    sources: Sequence[str] = SELECTION_SOURCES, truth: np.ndarray | None = None) -> float:
    """What the offset is chosen for: the mean kappa, over those of `sources` the rows hold, against `truth`
    (default: each row's reference, `match`); by default on texts written without an emotion instruction or by
    the default model (Llama's un-prompted replies, the rated replies)."""
    pred = matches(logp, rows, offset)
    truth = np.array([r.match for r in rows]) if truth is None else truth
    scores = [cohen_kappa(truth[mask], pred[mask])
              for mask in (np.array([r.source == s for r in rows]) for s in sources) if mask.any()]
    return float(np.mean(scores)) if scores else 0.0


def best_offset(logp: np.ndarray, rows: Sequence[LabelledText], sources: Sequence[str] = SELECTION_SOURCES,
                truth: np.ndarray | None = None) -> float:
    """The grid offset with the best selection score (ties: the one closest to 0)."""
    scores = [(round(selection_score(logp, rows, o, sources, truth), 6), -abs(o)) for o in OFFSET_GRID]
    return OFFSET_GRID[max(range(len(OFFSET_GRID)), key=lambda i: scores[i])]


LogProbFit = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train rows, predict rows) -> [n_predict, 7]


def cross_validated(fit_predict: LogProbFit, folds: np.ndarray) -> np.ndarray:
    """Held-out log-probabilities of every row: fold k predicted by a model fitted on the other folds."""
    out = None
    for k in sorted(set(folds.tolist())):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        logp = fit_predict(train, test)
        out = np.zeros((len(folds), logp.shape[1]), np.float32) if out is None else out
        out[test] = logp
    return out


def fluency_figures(rows: Sequence[LabelledText], match: np.ndarray, fluent: np.ndarray) -> dict[str, Any]:
    """Held-out fluent, match and fluent_match figures against careful reading, per condition and overall."""
    truth_match = np.array([r.match for r in rows])
    truth_fluent = np.array([r.fluent for r in rows])
    condition = np.array([r.condition for r in rows])
    out = {}
    for name in (*CONDITIONS, "overall"):
        mask = np.ones(len(rows), bool) if name == "overall" else condition == name
        out[name] = {"fluent": binary_figures(truth_fluent[mask], fluent[mask]),
                     "match": binary_figures(truth_match[mask], match[mask]),
                     "fluent_match": binary_figures((truth_match & truth_fluent)[mask], (match & fluent)[mask])}
    return out


def taught_offset(logp: np.ndarray, rows: Sequence[LabelledText], sources: Sequence[str]) -> float:
    """best_offset on `sources`, against the verdict each row was taught (its class is its target) rather than its
    reference: the rule for texts of several models, whatever reference taught them."""
    return best_offset(logp, rows, sources, np.array([int(r.label == r.target) for r in rows]))
