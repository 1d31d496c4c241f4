"""Fitting the offline judge and the fluency rule, and the flags the fits read.

Shared by the launchers that fit them: experiments.judge_training.train (the shipped artefacts),
.transfer (the judge designs across models) and .fluency_context (the rule on replies read alone). Each
launcher calls `define_flags()` once, so the flags are filed under it and its --help lists them;
.zero_shot, which fits no judge and no rule, calls `define_data_flags()` for the data and fold flags alone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from absl import flags, logging

from emojax.data.sev import EMOTIONS
from emojax.judge.features import SparseRows
from emojax.judge.fit import fit_logistic, fit_softmax_regression
from emojax.judge.fluency import FluencyRule
from emojax.judge.offline import CLASSES, DEFAULT_ARTIFACT, log_softmax
from emojax.judge.perplexity import perplexities
from emojax.runs.atomic import write_json
from emojax.weights.cache import resolve_cache_dir
from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training.data import NONE, LabelledText

REPO_ROOT = Path(__file__).resolve().parents[2]  # experiments/judge_training/ -> the repository
# Log-probabilities of these texts are stored with the artefact; tests recompute them, so any change
# to the feature hashing or the inference code that would silently alter verdicts is caught.
PROBE_TEXTS = ("Ugh, this is revolting and I can't stand the smell.",
               "Oh no, what if everything goes wrong tomorrow?",
               "The meeting has been moved to Thursday at noon.")

FLAGS = flags.FLAGS


def define_data_flags() -> None:
    """Define the flags that name the labelled data and its folds, at launcher import (once per process)."""
    if "data_dir" in FLAGS:
        return
    flags.disclaim_key_flags()  # the calling launcher owns these flags, so its --help lists them
    flags.DEFINE_string("data_dir", str(REPO_ROOT.parent / "shared" / "data" / "official"),
                        "Folder with sev.jsonl and llama32_3b/{prompting_sev,steering_half}.")
    flags.DEFINE_string("labels_dir", str(REPO_ROOT.parent / "shared" / "data" / "labels"),
                        "Folder with smollm2_train_replies.jsonl (the default model's rated replies).")
    flags.DEFINE_integer("folds", 5, "Outer cross-validation folds, split by scenario.")
    flags.DEFINE_integer("seed", 0, "Seed of the scenario-to-fold assignment.")


def define_flags() -> None:
    """Define the data flags and the fitting flags on absl's global FLAGS, at launcher import. A process that
    imports several of these launchers (the tests) defines them once, under the first."""
    define_data_flags()
    if "fluency_l2" in FLAGS:
        return
    flags.disclaim_key_flags()
    flags.DEFINE_string("out", str(DEFAULT_ARTIFACT.parent), "Folder for offline_judge.npz/.json and fluency_rule.json.")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "The model that wrote the rated replies (their perplexity).")
    flags.DEFINE_string("perplexity_cache", None, "JSON file caching the rated replies' perplexities "
                        "(default: <cache dir>/judge/rated-perplexity-<labels>-<model>.json).")
    flags.DEFINE_integer("batch_size", 48, "Rows per forward of the perplexity pass.")
    flags.DEFINE_integer("n_buckets", 2**17, "Hash buckets (a power of two).")
    flags.DEFINE_float("l2", 1e-4, "L2 penalty on the judge's weights (features have unit norm).")
    flags.DEFINE_float("none_weight", 1.0, "Sample weight of 'none' texts relative to the others.")
    flags.DEFINE_integer("inner_folds", 3, "Inner folds (inside each outer training part) that choose the offset.")
    flags.DEFINE_integer("max_steps", 200, "L-BFGS steps per fit.")
    flags.DEFINE_bool("neutral_sentences", True, "Add the sev.jsonl scenario/event sentences as 'none' texts.")
    flags.DEFINE_float("neutral_weight", 0.3, "Sample weight of each neutral sentence (they outnumber the real "
                       "non-matches, and at full weight make the judge reject weakly emotional replies).")
    flags.DEFINE_float("rated_weight", None, "Sample weight of each rated reply; default: official replies / rated "
                       "replies of the fitted texts, so that the two references weigh the same.")
    flags.DEFINE_float("fluency_l2", 1e-3, "L2 penalty of the fluency rule's logistic regression (standardised features).")


# ---------------------------------------------------------------------------------------------
# The judge


def rated_weight(rows: Sequence[LabelledText]) -> float:
    """--rated_weight, else official replies / rated replies among `rows`: both references weigh the same
    (1 where either is absent)."""
    if FLAGS.rated_weight is not None:
        return FLAGS.rated_weight
    rated = sum(r.source == "rated" for r in rows)
    official = sum(r.source in ("prompted", "unprompted") for r in rows)
    return official / rated if rated and official else 1.0


def balanced_scales(rows: Sequence[LabelledText]) -> dict[str, float]:
    """{source: weight of each of its replies} such that every model's replies weigh as much in total as
    the most numerous model's: rated_weight's rule for any number of models (Llama's two sources together)."""
    models = (("prompted", "unprompted"), ("rated",), ("gemma",))
    counts = {sources: sum(r.source in sources for r in rows) for sources in models}
    top = max(counts.values())
    return {s: top / n for sources, n in counts.items() if n for s in sources}


def sample_weights(rows: Sequence[LabelledText], scales: dict[str, float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(class index, sample weight) of each text: what every judge head is fitted to. `scales` multiplies
    the weight of each named source's texts (default: the rated replies by rated_weight)."""
    labels = np.array([CLASSES.index(r.label) for r in rows])
    weight = np.where(labels == CLASSES.index(NONE), FLAGS.none_weight, 1.0)
    source = np.array([r.source for r in rows])
    weight[source == "neutral"] = FLAGS.neutral_weight
    for name, scale in ({"rated": rated_weight(rows)} if scales is None else scales).items():
        weight[source == name] *= scale
    return labels, weight


def fit(features: SparseRows, rows: Sequence[LabelledText], scales: dict[str, float] | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    labels, weight = sample_weights(rows, scales)
    w, b = fit_softmax_regression(features, labels, n_classes=len(CLASSES), n_buckets=FLAGS.n_buckets,
                                  l2=FLAGS.l2, sample_weight=weight, max_steps=FLAGS.max_steps)
    return w.astype(np.float16), b  # shipped as float16, so every figure uses the rounded weights


def fit_predict(features: SparseRows, rows: Sequence[LabelledText], train: np.ndarray, test: np.ndarray,
                scales_of: Callable[[Sequence[LabelledText]], dict[str, float]] | None = None) -> np.ndarray:
    """Log-probs of the `test` rows by a fit on the `train` rows, weighted by `scales_of(train rows)`
    (default: sample_weights' own)."""
    start = time.perf_counter()
    train_rows = [rows[i] for i in train]
    w, b = fit(features.take(train), train_rows, None if scales_of is None else scales_of(train_rows))
    logging.info("fit on %d texts, %d predicted: %.0f s", len(train), len(test), time.perf_counter() - start)
    return log_softmax(features.take(test).dot(w.astype(np.float32)) + b)


def nested_cross_validation(features: SparseRows, rows: Sequence[LabelledText], folds: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(held-out log-probs [n, 7], the offset applied to each row, the offset chosen in each fold)."""
    logp = np.zeros((len(rows), len(CLASSES)), np.float32)
    row_offset = np.zeros(len(rows), np.float32)
    chosen = []
    for k in range(FLAGS.folds):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        train_rows = [rows[i] for i in train]
        inner = judge_cv.scenario_folds([r.scenario for r in train_rows], FLAGS.inner_folds, FLAGS.seed + 1 + k)
        inner_logp = judge_cv.cross_validated(lambda tr, te: fit_predict(features, rows, train[tr], train[te]), inner)
        offset = judge_cv.best_offset(inner_logp, train_rows)
        logp[test] = fit_predict(features, rows, train, test)
        row_offset[test] = offset
        chosen.append(offset)
        logging.info("fold %d/%d: offset %.1f chosen by the inner folds", k + 1, FLAGS.folds, offset)
    return logp, row_offset, chosen


def row_matches(logp: np.ndarray, rows: Sequence[LabelledText], row_offset: np.ndarray) -> np.ndarray:
    """The match rule, each row with its own fold's offset."""
    out = np.zeros(len(rows), np.int64)
    for offset in np.unique(row_offset):
        mask = row_offset == offset
        out[mask] = judge_cv.matches(logp[mask], [r for r, m in zip(rows, mask) if m], float(offset))
    return out


def false_match_rates(logp: np.ndarray, offset: np.ndarray) -> dict[str, float]:
    """Fraction of texts that the match rule accepts for each target emotion in turn."""
    rates = {}
    for i, e in enumerate(EMOTIONS):
        own = logp[:, i] + offset
        others = np.delete(logp, i, axis=1).max(axis=1)
        rates[e] = round(float(np.mean(own > others)), 4)
    return rates


def judge_figures(logp: np.ndarray, rows: Sequence[LabelledText], row_offset: np.ndarray,
                  match: np.ndarray) -> dict[str, Any]:
    source = np.array([r.source for r in rows])
    truth = np.array([r.match for r in rows])
    target = judge_cv.target_indices(rows)
    neutral = source == "neutral"
    six_way = logp[:, : len(EMOTIONS)].argmax(axis=1)
    accepted = (source == "prompted") & (truth == 1)
    confusion = np.zeros((len(EMOTIONS), len(EMOTIONS)), int)
    np.add.at(confusion, (target[accepted], six_way[accepted]), 1)
    figures = {
        "six_way_accuracy_prompted_accepted": round(float(np.mean(six_way[accepted] == target[accepted])), 4),
        "six_way_confusion_prompted_accepted": {"rows": "reference emotion", "columns": "predicted emotion",
                                                "order": list(EMOTIONS), "counts": confusion.tolist()},
        "binary_prompted_accepted_and_rejected": judge_cv.binary_figures(truth[source == "prompted"],
                                                                         match[source == "prompted"]),
        "binary_unprompted": judge_cv.binary_figures(truth[source == "unprompted"], match[source == "unprompted"]),
        "binary_unprompted_per_emotion": {
            e: judge_cv.binary_figures(truth[(source == "unprompted") & (target == i)],
                                       match[(source == "unprompted") & (target == i)])
            for i, e in enumerate(EMOTIONS)},
    }
    if neutral.any():
        figures["neutral_sentences_false_match_rate"] = false_match_rates(logp[neutral], row_offset[neutral])
    return figures


# ---------------------------------------------------------------------------------------------
# The fluency rule


def default_perplexity_cache(labels_sha: str, model_hash: str) -> Path:
    return resolve_cache_dir() / "judge" / f"rated-perplexity-{labels_sha[:16]}-{model_hash[:16]}.json"


def rated_perplexities(rated: Sequence[LabelledText], labels_sha: str) -> tuple[np.ndarray, dict[str, str]]:
    """Perplexity of every rated reply under FLAGS.model given its prompt, from the cache when it is there."""
    from emojax.loading import load_model

    model = load_model(FLAGS.model)
    cache = Path(FLAGS.perplexity_cache) if FLAGS.perplexity_cache else default_perplexity_cache(labels_sha,
                                                                                                model.source_hash)
    about = {"model": model.name, "model_hash": model.source_hash}
    if cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("labels_sha256") == labels_sha and stored.get("model_hash") == model.source_hash:
            logging.info("rated perplexities from %s", cache)
            return np.array([np.nan if p is None else p for p in stored["perplexity"]], np.float64), about
    logging.info("perplexity of %d rated replies under %s (one forward per %d rows)", len(rated), model.name,
                 FLAGS.batch_size)
    values = perplexities(model, [r.prompt for r in rated], [r.text for r in rated], batch_size=FLAGS.batch_size)
    write_json(cache, {"labels_sha256": labels_sha, **about,
                       "perplexity": [None if not np.isfinite(p) else float(p) for p in values]})
    return values, about


def fit_rule(features: np.ndarray, fluent: np.ndarray) -> FluencyRule:
    usable = np.isfinite(features).all(axis=1)
    x, y = features[usable], fluent[usable]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    w, b = fit_logistic((x - mean) / scale, y, l2=FLAGS.fluency_l2)
    return FluencyRule(tuple(mean.tolist()), tuple(scale.tolist()), tuple(w.tolist()), b)


def cross_validated_fluent(features: np.ndarray, fluent: np.ndarray, folds: np.ndarray) -> np.ndarray:
    out = np.zeros(len(fluent), np.int64)
    for k in sorted(set(folds.tolist())):
        train, test = folds != k, folds == k
        out[test] = fit_rule(features[train], fluent[train]).fluent_of_features(features[test])
    return out
