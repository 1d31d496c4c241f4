"""Careful reading of Llama-3.2-3B's official steered replies, set against gpt-4o-mini and against the designs.

Two files in labels/ (their README): a stratified sample of 114 replies read twice (`ReadSample`: figures
weighted by stratum estimate all 1,440), and the other 1,326 read once, 136 of them twice, so that with the
sample's first reading every steered reply has a careful verdict (`data.load_llama_careful`). gpt-4o-mini is
the paper's reference; careful reading is the one every other model's replies here are rated by.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from emojax.evaluation.reading import weighted_agreement
from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training.data import LabelledText, ReadSample
from experiments.judge_training.transfer_bounds import match_margins


def weighted_figures(truth: np.ndarray, pred: np.ndarray, weight: np.ndarray) -> dict[str, Any]:
    """Agreement, kappa (None where undefined) and both rates of a stratified sample, rows weighted by stratum."""
    agreement, kappa = weighted_agreement(truth, pred, weight)
    w = weight / weight.sum()
    return {"n": int(len(truth)), "agreement": round(agreement, 4), "kappa": None if kappa is None else round(kappa, 4),
            "reference_rate": round(float(np.sum(w * truth)), 4), "judged_rate": round(float(np.sum(w * pred)), 4)}


def sample_rows(rows: Sequence[LabelledText], sample: ReadSample) -> np.ndarray:
    """Index in `rows` of each read reply: the official steered reply of the same scenario, text and target
    (a few replies recur word for word across scenarios, which sit in different folds)."""
    where = {(r.scenario, r.text, r.target): i for i, r in enumerate(rows) if r.source == "unprompted"}
    keys = list(zip(sample.scenarios, sample.texts, sample.targets))
    missing = [k for k in keys if k not in where]
    if missing:
        raise ValueError(f"{len(missing)} read replies are not among the official steered replies: {missing[0][:2]!r}")
    return np.array([where[k] for k in keys])


def reading_figures(sample: ReadSample) -> dict[str, Any]:
    """How the two careful readings agree with each other and with gpt-4o-mini, weighted to all 1,440 replies."""
    return {"n": len(sample.texts), "strata": "target emotion x gpt-4o-mini verdict",
            "second_vs_first": weighted_figures(sample.match, sample.second_match, sample.weight),
            "gpt_vs_first": weighted_figures(sample.match, sample.gpt_match, sample.weight),
            "gpt_vs_second": weighted_figures(sample.second_match, sample.gpt_match, sample.weight),
            "first_on_gpt_matches": _weighted_mean(sample.match, sample.weight, sample.gpt_match == 1),
            "first_on_gpt_non_matches": _weighted_mean(sample.match, sample.weight, sample.gpt_match == 0)}


def _weighted_mean(values: np.ndarray, weight: np.ndarray, mask: np.ndarray) -> float:
    return round(float(np.sum(values[mask] * weight[mask]) / np.sum(weight[mask])), 4)


def judged_on_reading(logp: np.ndarray, rows: Sequence[LabelledText], index: np.ndarray, sample: ReadSample,
                      row_offset: np.ndarray) -> dict[str, Any] | None:
    """A design's held-out verdicts (each row at its fold model's offset) on the read replies against careful
    reading and against gpt-4o-mini."""
    if np.isnan(logp[index, 0]).any():
        return None
    match = (match_margins(logp[index], [rows[i] for i in index]) < row_offset[index]).astype(np.int64)
    return {"vs_reading": weighted_figures(sample.match, match, sample.weight),
            "vs_gpt": weighted_figures(sample.gpt_match, match, sample.weight)}


def careful_matches(rows: Sequence[LabelledText], careful: Mapping[str, tuple[int, str, int]]) -> np.ndarray:
    """Careful reading's match of each of Llama's steered replies among `rows`, -1 for every other row."""
    return np.array([careful[r.key][0] if r.source == "unprompted" else -1 for r in rows], np.int64)


def careful_labels(rows: Sequence[LabelledText], careful: Mapping[str, tuple[int, str, int]]) -> list[LabelledText]:
    """`rows` with Llama's steered replies taught by careful reading: their training class becomes the careful
    reading's (the target when it matches, else the emotion the text mainly expresses, else none), while
    `match`, the reference their figures are computed against, stays gpt-4o-mini's."""
    return [dataclasses.replace(r, label=careful[r.key][1]) if r.source == "unprompted" else r for r in rows]


def against_careful(rows: Sequence[LabelledText], careful: Mapping[str, tuple[int, str, int]]) -> list[LabelledText]:
    """`rows` with Llama's steered replies' reference, `match`, taken from careful reading (for figures against it)."""
    return [dataclasses.replace(r, match=careful[r.key][0]) if r.source == "unprompted" else r for r in rows]


def census_figures(rows: Sequence[LabelledText], careful: Mapping[str, tuple[int, str, int]],
                   double: np.ndarray) -> dict[str, Any]:
    """Careful reading of all the steered replies against gpt-4o-mini, and the two readings of the rows read twice
    (`double` [n, 2]: first and second match of each)."""
    steered = [r for r in rows if r.source == "unprompted"]
    gpt = np.array([r.match for r in steered])
    read = careful_matches(steered, careful)
    return {"n": len(steered), "careful_vs_gpt": judge_cv.binary_figures(gpt, read),
            "careful_rate": round(float(read.mean()), 4), "gpt_rate": round(float(gpt.mean()), 4),
            "careful_on_gpt_matches": round(float(read[gpt == 1].mean()), 4),
            "careful_on_gpt_non_matches": round(float(read[gpt == 0].mean()), 4),
            "second_vs_first": judge_cv.binary_figures(double[:, 0], double[:, 1])}
