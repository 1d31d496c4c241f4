"""What no design of a cross-model protocol can reach: bounds that sit beside the designs' figures.

`coverage_ceiling`: a head never predicts a class absent from its training labels, so a reply whose target no
training label carries is never a match, whatever the design. `offset_ceiling`: the best a design's verdicts can
get on the model a protocol leaves out by moving its one match offset, the offset chosen with that model's own
labels; no offset tuned on training text can beat it, so where it falls short of a goal, recalibrating the design
cannot reach the goal. Both are bounds, never a judge's figure.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training.data import LabelledText

RATED_SOURCES = {"rated": "smollm2", "gemma": "gemma"}  # careful-reading sources: their figure prefixes
# The goals of each leave-one-source-out protocol: (reply subset, verdict) on the model it leaves out.
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
        subsets.update({f"{prefix}_{c}": (source == kind) & (condition == c) for c in ("prompting", "steering", "circuit")})
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
                     protocols: dict[str, tuple[set[str], set[str]]] = judge_cv.PROTOCOLS) -> dict[str, dict[str, Any]]:
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


def threshold_offsets(margins: np.ndarray) -> np.ndarray:
    """One offset for every distinct verdict vector the match rule can give these margins: below them all, between
    each pair of neighbours, above them all."""
    cuts = np.unique(margins)
    return np.concatenate([[cuts[0] - 1.0], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1.0]])


def offset_ceiling(logp: np.ndarray, rows: Sequence[LabelledText], fluent: np.ndarray | None,
                   subsets: dict[str, np.ndarray], goals: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """{"<subset>/<verdict>": the best kappa (with its offset and the agreement there) and the best agreement
    (with its offset) that any one match offset, every target alike, gives the subset's held-out verdicts}.

    Every offset is scanned, not a grid: the verdicts change only where the offset crosses a text's margin.
    `logp` holds a protocol's held-out log-probs (NaN on rows it does not test); `fluent` the fluency verdicts a
    fluent_match figure takes (None: no fluent_match bound). Ties go to the offset nearest 0.
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
        for offset in threshold_offsets(margins):
            pred = ((margins < offset) & gate).astype(np.int64)
            scans.append((judge_cv.cohen_kappa(truth, pred), float(np.mean(truth == pred)), float(offset)))
        by_kappa = max(scans, key=lambda s: (s[0], -abs(s[2])))
        by_agreement = max(scans, key=lambda s: (s[1], -abs(s[2])))
        target = np.array([r.target for r in part])
        out[f"{subset}/{verdict}"] = {
            "n": int(len(index)), "kappa": round(by_kappa[0], 4), "kappa_offset": by_kappa[2],
            "agreement_at_kappa": round(by_kappa[1], 4), "agreement": round(by_agreement[1], 4),
            "agreement_offset": by_agreement[2],
            "agreement_per_target_offsets": round(sum(
                best_agreeing(margins[target == e], gate[target == e], truth[target == e])
                for e in np.unique(target)) / len(index), 4)}
    return out


def best_agreeing(margins: np.ndarray, gate: np.ndarray, truth: np.ndarray) -> int:
    """The most verdicts of one target's texts that any offset of that target gets right. Agreement is a sum over
    texts and a text's verdict depends on its own target's offset alone, so per-target bests add up to the best
    agreement of the rule's six offsets."""
    return max(int(np.sum(((margins < offset) & gate) == truth)) for offset in threshold_offsets(margins))
