"""What no design of a cross-model protocol can reach: bounds that sit beside the designs' figures.

`coverage_ceiling`: a head never predicts a class absent from its training labels, so a reply whose target no
training label carries is never a match, whatever the design. `offset_ceiling`: the best a design's verdicts can
get on the model a protocol leaves out by moving its one match offset, the offset chosen with that model's own
labels; no offset tuned on training text can beat it, so where it falls short of a goal, recalibrating the design
cannot reach the goal (with one offset per fold's model, as the trainer tunes it, the bound is on agreement,
and on kappa through it). Both are bounds, never a judge's figure.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training.data import LabelledText

RATED_SOURCES = {"rated": "smollm2", "gemma": "gemma"}  # careful-reading sources: their figure prefixes
# The offsets the ceilings scan stay within +-OFFSET_LIMIT (log-probability units; the trainer's grid spans +-3): a
# class absent from the training labels sits near -1e9, and only an offset of that size accepts such a reply, and
# then every one of them at once; no tuning on the grid comes near it.
OFFSET_LIMIT = 100.0
# The headline goals of each leave-one-source-out protocol: (reply subset, verdict) on the model it leaves out (the
# prompted and neutral false-match goals are figures of their own).
GOAL_FIGURES = {"no_llama": (("llama_steered", "match"),),
                "no_smollm2": (("smollm2_all", "fluent_match"), ("smollm2_circuit", "match")),
                "no_gemma": (("gemma_all", "fluent_match"),)}


def reply_subsets(rows: Sequence[LabelledText]) -> dict[str, np.ndarray]:
    """{figure name: row mask} of the replies each figure is computed on (every source, every rated condition)."""
    source = np.array([r.source for r in rows])
    condition = np.array([r.condition for r in rows])
    subsets = {"llama_prompted": source == "prompted", "llama_steered": source == "unprompted"}
    for kind, prefix in RATED_SOURCES.items():
        subsets[f"{prefix}_all"] = source == kind
        subsets.update({f"{prefix}_{c}": (source == kind) & (condition == c)
                        for c in ("prompting", "steering", "circuit")})
    return subsets


def coverage_ceiling(rows: Sequence[LabelledText], folds: np.ndarray, train_sources: set[str],
                     tested: np.ndarray) -> dict[str, Any]:
    """The best match figures any head fitted on `train_sources` alone can reach on the `tested` rows.

    A head never predicts a class absent from its training labels: LDA gives it no mean and a bias of -1e9,
    exactly; a softmax regression only ever learns to push it down, so in practice (docs/judge.md measures
    it). A reply whose target emotion no training label of its fold carries is therefore not a match. The
    ceiling judges every other reply as its reference does: agreement and kappa no design of this protocol
    can beat.
    """
    source = np.array([r.source for r in rows])
    labels = np.array([r.label for r in rows])
    truth = np.array([r.match for r in rows])
    seen = np.zeros(len(rows), bool)
    for k in np.unique(folds[tested]):
        present = set(labels[(folds != k) & np.isin(source, list(train_sources))].tolist())
        members = np.flatnonzero(tested & (folds == k))
        seen[members] = [rows[i].target in present for i in members]
    best = np.where(seen, truth, 0)
    lost = tested & ~seen & (truth == 1)
    return {"unseen_targets": sorted({rows[i].target for i in np.flatnonzero(tested & ~seen)}),
            "reference_matches_lost": int(lost.sum()), **judge_cv.binary_figures(truth[tested], best[tested])}


def coverage_figures(rows: Sequence[LabelledText], folds: np.ndarray,
                     protocols: dict[str, tuple[set[str], set[str]]] = judge_cv.PROTOCOLS
                     ) -> dict[str, dict[str, Any]]:
    """{protocol: {subset: coverage_ceiling}} for every subset a protocol tests (neutral sentences aside)."""
    source = np.array([r.source for r in rows])
    out: dict[str, dict[str, Any]] = {}
    for protocol, (train_sources, test_sources) in protocols.items():
        tested = np.isin(source, list(test_sources - {"neutral"}))
        out[protocol] = {name: coverage_ceiling(rows, folds, train_sources, mask & tested)
                         for name, mask in reply_subsets(rows).items() if (mask & tested).any()}
    return out


def match_margins(logp: np.ndarray, rows: Sequence[LabelledText]) -> np.ndarray:
    """The offset each text needs to be a match: the best other class's log-prob less the target's. The match rule
    with offset o accepts exactly the texts whose margin is below o."""
    target = judge_cv.target_indices(rows)
    own = logp[np.arange(len(rows)), target]
    others = logp.copy()
    others[np.arange(len(rows)), target] = -np.inf
    return others.max(axis=1) - own


def verdict_scan(margins: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(offset, accepted [n] bool) for every distinct set of texts an offset within +-OFFSET_LIMIT accepts: the
    limit itself below, then for each margin m in range the offsets just above it (accepting every margin <= m;
    the offset reported is halfway to the next margin)."""
    cuts = np.unique(margins[(margins >= -OFFSET_LIMIT) & (margins < OFFSET_LIMIT)])
    above = np.minimum(np.append(cuts[1:], OFFSET_LIMIT), np.minimum(cuts + 1.0, OFFSET_LIMIT))
    # halfway, or the next float where two margins are neighbouring floats
    offsets = np.maximum((cuts + above) / 2, np.nextafter(cuts, np.inf))
    return [(-OFFSET_LIMIT, margins < -OFFSET_LIMIT), *((float(o), margins <= c) for o, c in zip(offsets, cuts))]


def kappa_bound(agreement: float, rate: float) -> float:
    """The highest Cohen's kappa any verdicts with at most this agreement can have against a reference of this
    positive rate p: kappa = 1 - d / (1 - pe) for disagreement d, and 1 - pe is largest when the judged rate sits d
    from p towards 1/2, where it is 2p(1-p) + d|1-2p| (the bound is reached where p +- d stays within [0, 1])."""
    d = 1.0 - agreement
    spread = 2 * rate * (1 - rate) + d * abs(1 - 2 * rate)
    return 1.0 if d == 0 else (1.0 - d / spread if spread > 0 else 0.0)


def offset_ceiling(logp: np.ndarray, rows: Sequence[LabelledText], fluent: np.ndarray | None,
                   subsets: dict[str, np.ndarray], goals: Sequence[tuple[str, str]], folds: np.ndarray
                   ) -> dict[str, Any]:
    """{"<subset>/<verdict>": what any match offsets, chosen with the subset's own labels, give its held-out verdicts}.

    With one offset for every fold's model and every target: the best kappa (its offset, the agreement there) and the
    best agreement (its offset). Agreement is a sum over texts, and a text's verdict depends only on the offset of its
    own fold and target, so per-fold (and per-fold-and-target) bests add up exactly: `agreement_per_fold_offsets`
    (one offset per fold's model, as the trainer tunes it) and `agreement_per_fold_target_offsets`;
    `kappa_bound_per_fold_offsets` bounds kappa through that agreement (kappa_bound). Every offset within
    +-OFFSET_LIMIT is scanned, not a grid. `logp` holds a protocol's held-out log-probs (NaN on rows it does not
    test); `fluent` the fluency verdicts a fluent_match figure takes (None: no fluent_match bound). Ties among the
    scanned offsets go to the one nearest 0.
    """
    out: dict[str, Any] = {}
    for subset, verdict in goals:
        index = np.flatnonzero(subsets[subset] & ~np.isnan(logp[:, 0]))
        if not len(index) or (verdict == "fluent_match" and fluent is None):
            continue
        part = [rows[i] for i in index]
        truth = np.array([r.match for r in part])
        gate = np.ones(len(index), bool) if verdict == "match" else fluent[index].astype(bool)
        if verdict == "fluent_match":
            truth = truth & np.array([r.fluent for r in part])
        margins = match_margins(logp[index].astype(np.float64), part)
        scans = []
        for offset, accepted in verdict_scan(margins):
            pred = (accepted & gate).astype(np.int64)
            scans.append((judge_cv.cohen_kappa(truth, pred), float(np.mean(truth == pred)), offset))
        by_kappa = max(scans, key=lambda s: (s[0], -abs(s[2])))
        by_agreement = max(scans, key=lambda s: (s[1], -abs(s[2])))
        target, fold = np.array([r.target for r in part]), folds[index]
        per_fold = sum(best_agreeing(margins[g], gate[g], truth[g]) for g in _groups(fold)) / len(index)
        per_fold_target = sum(best_agreeing(margins[g], gate[g], truth[g])
                              for g in _groups(fold, target)) / len(index)
        out[f"{subset}/{verdict}"] = {
            "n": int(len(index)), "kappa": round(by_kappa[0], 4), "kappa_offset": by_kappa[2],
            "agreement_at_kappa": round(by_kappa[1], 4), "agreement": round(by_agreement[1], 4),
            "agreement_offset": by_agreement[2], "agreement_per_fold_offsets": round(per_fold, 4),
            "kappa_bound_per_fold_offsets": round(kappa_bound(per_fold, float(truth.mean())), 4),
            "agreement_per_fold_target_offsets": round(per_fold_target, 4)}
    return out


def _groups(*keys: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the texts that share every key."""
    combined = np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    return [np.flatnonzero(combined == g) for g in np.unique(combined)]


def best_agreeing(margins: np.ndarray, gate: np.ndarray, truth: np.ndarray) -> int:
    """The most of these texts' verdicts that one offset within +-OFFSET_LIMIT gets right."""
    return max(int(np.sum((accepted & gate) == truth)) for _, accepted in verdict_scan(margins))
