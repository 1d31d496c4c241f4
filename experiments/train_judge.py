"""Train the offline emotion judge on gpt-4o-mini verdicts and write its artefact with held-out figures.

    python -m experiments.train_judge [--data_dir=../shared/data/official] [--out=emojax/judge/artifacts]

Training data (Llama-3.2-3B-Instruct replies, labelled by gpt-4o-mini with the §4.3 prompt):
  prompting_sev/accepted.jsonl   prompted replies judged to match their target emotion
  prompting_sev/rejected.jsonl   prompted replies judged not to match (judge API errors are dropped:
                                 their label is unknown)
  steering_half/labeled_results.jsonl   replies written with no emotion instruction, with verdicts
  sev.jsonl                      (with --neutral_sentences) the scenario and event sentences, which
                                 are written without emotion words: extra "none" texts, so that the
                                 content of a reply (a failed exam, a delayed train) is not read as
                                 its tone
Matches are labelled with their target emotion and non-matches with the class "none", and a 7-way
softmax regression is fitted (emojax.judge.fit). The held-out figures come from cross-validation by
scenario (skeleton_id): every reply of a scenario is in the same fold, and no number is tuned on a
held-out fold. The shipped model is then refitted on all the data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import app, flags, logging

from emojax.data.sev import BUNDLED_DIR, BUNDLED_SPLITS, EMOTIONS
from emojax.judge.features import FeatureSpec, featurize
from emojax.judge.fit import fit_softmax_regression
from emojax.judge.offline import (CLASSES, DEFAULT_ARTIFACT, FORMAT_VERSION, OfflineJudge, log_softmax,
                                  match_rule)
from emojax.runs.atomic import write_json, write_npz

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_VERSION = "1.0"
# Log-probabilities of these texts are stored with the artefact; tests recompute them, so any change
# to the feature hashing or the inference code that would silently alter verdicts is caught.
PROBE_TEXTS = ("Ugh, this is revolting and I can't stand the smell.",
               "Oh no, what if everything goes wrong tomorrow?",
               "The meeting has been moved to Thursday at noon.")
NONE = len(EMOTIONS)  # index of the "none" class
# gpt-4o-mini failures recorded in the official rejected file: not verdicts about the text.
JUDGE_ERROR_PREFIXES = ("json-decode-error", "invalid-json")

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", str(REPO_ROOT.parent / "shared" / "data" / "official"),
                    "Folder with sev.jsonl and llama32_3b/{prompting_sev,steering_half}.")
flags.DEFINE_string("out", str(DEFAULT_ARTIFACT.parent), "Folder for offline_judge.npz/.json.")
flags.DEFINE_integer("n_buckets", 2**17, "Hash buckets (a power of two).")
flags.DEFINE_float("l2", 1e-4, "L2 penalty on the weights (features have unit norm).")
flags.DEFINE_float("none_weight", 1.5, "Sample weight of 'none' (non-match) texts relative to matches.")
flags.DEFINE_integer("folds", 5, "Cross-validation folds, split by scenario.")
flags.DEFINE_integer("seed", 0, "Seed of the scenario-to-fold assignment.")
flags.DEFINE_integer("max_steps", 200, "L-BFGS steps per fit.")
flags.DEFINE_bool("neutral_sentences", True, "Add the sev.jsonl scenario/event sentences as 'none' texts.")
flags.DEFINE_float("neutral_weight", 0.3, "Sample weight of each neutral sentence (they outnumber the real "
                   "non-matches, and at full weight make the judge reject weakly emotional replies).")


@dataclasses.dataclass(frozen=True)
class LabelledText:
    text: str
    target: str  # "" for a neutral sentence, which has no target
    match: int
    scenario: str  # skeleton_id: the cross-validation group
    source: str  # "prompted", "unprompted" or "neutral"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_labelled(data_dir: Path) -> tuple[list[LabelledText], dict[str, str], int]:
    """(labelled texts, sha256 of each input file, number of judge-error rows dropped)."""
    base = data_dir / "llama32_3b"
    files = {"accepted": base / "prompting_sev" / "accepted.jsonl",
             "rejected": base / "prompting_sev" / "rejected.jsonl",
             "unprompted": base / "steering_half" / "labeled_results.jsonl"}
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"--data_dir={data_dir}: missing {name} file {path}")
    rows, dropped = [], 0
    for kind in ("accepted", "rejected"):
        for i, record in enumerate(_jsonl(files[kind])):
            judge = record["judge"]
            if str(judge.get("reason", "")).startswith(JUDGE_ERROR_PREFIXES):
                dropped += 1
                continue
            if judge["match"] != (kind == "accepted"):
                raise ValueError(f"{files[kind]} line {i + 1}: judge.match={judge['match']} in the {kind} file")
            rows.append(LabelledText(record["gen_text"], record["emotion"], int(judge["match"]),
                                     record["skeleton_id"], "prompted"))
    for record in _jsonl(files["unprompted"]):
        for valence, verdicts in record["valence_labels"].items():
            for emotion, verdict in verdicts.items():
                rows.append(LabelledText(record["event_valences"][valence][emotion], emotion,
                                         int(verdict["match"]), record["skeleton_id"], "unprompted"))
    if FLAGS.neutral_sentences:
        files["neutral"] = data_dir / "sev.jsonl"
        rows += [LabelledText(text, "", 0, scenario, "neutral") for text, scenario in sev_sentences(files["neutral"])]
    hashes = {str(path.relative_to(data_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
              for path in files.values()}
    return rows, hashes, dropped


def sev_sentences(path: Path) -> list[tuple[str, str]]:
    """(sentence, skeleton_id) for every scenario and event of an SEV file."""
    out = []
    for record in _jsonl(path):
        out.append((record["scenario"], record["skeleton_id"]))
        out += [(record["event"][v], record["skeleton_id"]) for v in ("positive", "neutral", "negative")]
    return out


def scenario_folds(scenarios: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Fold index of each row; all rows of one scenario share a fold."""
    unique = sorted(set(scenarios))
    np.random.default_rng(seed).shuffle(unique)
    fold_of = {s: i % k for i, s in enumerate(unique)}
    return np.array([fold_of[s] for s in scenarios])


def fit(features, rows: Sequence[LabelledText]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([EMOTIONS.index(r.target) if r.match else NONE for r in rows])
    weight = np.where(labels == NONE, FLAGS.none_weight, 1.0)
    weight[[r.source == "neutral" for r in rows]] = FLAGS.neutral_weight
    w, b = fit_softmax_regression(features, labels, n_classes=len(CLASSES), n_buckets=FLAGS.n_buckets,
                                  l2=FLAGS.l2, sample_weight=weight, max_steps=FLAGS.max_steps)
    return w.astype(np.float16), b  # shipped as float16, so every figure uses the rounded weights


def cross_validated_log_probs(features, rows: Sequence[LabelledText]) -> np.ndarray:
    folds = scenario_folds([r.scenario for r in rows], FLAGS.folds, FLAGS.seed)
    logp = np.zeros((len(rows), len(CLASSES)), np.float32)
    for k in range(FLAGS.folds):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        start = time.perf_counter()
        w, b = fit(features.take(train), [rows[i] for i in train])
        logp[test] = log_softmax(features.take(test).dot(w.astype(np.float32)) + b)
        logging.info("fold %d/%d: %d train, %d held out, %.0f s", k + 1, FLAGS.folds, len(train),
                     len(test), time.perf_counter() - start)
    return logp


def cohen_kappa(truth: np.ndarray, pred: np.ndarray) -> float:
    observed = float(np.mean(truth == pred))
    p_t, p_p = truth.mean(), pred.mean()
    chance = float(p_t * p_p + (1 - p_t) * (1 - p_p))
    return 0.0 if chance == 1.0 else (observed - chance) / (1 - chance)


def binary_figures(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    return {"n": int(len(truth)), "agreement": round(float(np.mean(truth == pred)), 4),
            "kappa": round(cohen_kappa(truth, pred), 4),
            "reference_non_matches": int(np.sum(truth == 0)), "predicted_non_matches": int(np.sum(pred == 0)),
            "both_non_match": int(np.sum((truth == 0) & (pred == 0)))}


def false_match_rates(logp: np.ndarray) -> dict[str, float]:
    """Fraction of texts that the match rule accepts for each target emotion in turn."""
    zero = np.zeros(len(EMOTIONS), np.float32)
    return {e: round(float(match_rule(logp, np.full(len(logp), i), zero).mean()), 4)
            for i, e in enumerate(EMOTIONS)}


def held_out_figures(logp: np.ndarray, rows: Sequence[LabelledText]) -> dict[str, Any]:
    neutral = np.array([r.source == "neutral" for r in rows])
    figures = {"neutral_sentences_false_match_rate": false_match_rates(logp[neutral])} if neutral.any() else {}
    logp, rows = logp[~neutral], [r for r in rows if r.source != "neutral"]
    target = np.array([EMOTIONS.index(r.target) for r in rows])
    truth = np.array([r.match for r in rows])
    source = np.array([r.source for r in rows])
    pred = match_rule(logp, target, np.zeros(len(EMOTIONS), np.float32))
    six_way = logp[:, : len(EMOTIONS)].argmax(axis=1)
    accepted = (source == "prompted") & (truth == 1)
    confusion = np.zeros((len(EMOTIONS), len(EMOTIONS)), int)
    np.add.at(confusion, (target[accepted], six_way[accepted]), 1)
    figures.update({
        "protocol": f"{FLAGS.folds}-fold cross-validation by scenario (skeleton_id), seed {FLAGS.seed}",
        "six_way_accuracy_prompted_accepted": round(float(np.mean(six_way[accepted] == target[accepted])), 4),
        "six_way_confusion_prompted_accepted": {"rows": "reference emotion", "columns": "predicted emotion",
                                                "order": list(EMOTIONS), "counts": confusion.tolist()},
        "binary_prompted_accepted_and_rejected": binary_figures(truth[source == "prompted"],
                                                                pred[source == "prompted"]),
        "binary_unprompted": binary_figures(truth[source == "unprompted"], pred[source == "unprompted"]),
        "binary_unprompted_per_emotion": {
            e: binary_figures(truth[(source == "unprompted") & (target == i)],
                              pred[(source == "unprompted") & (target == i)]) for i, e in enumerate(EMOTIONS)},
    })
    return figures


def unseen_neutral_false_matches(judge: OfflineJudge) -> dict[str, Any]:
    """Match rates, per target, of the bundled SEV sentences (never used in training)."""
    texts = [text for split in BUNDLED_SPLITS for text, _ in sev_sentences(BUNDLED_DIR / f"{split}.jsonl")]
    return {"texts": f"{len(texts)} scenario and event sentences of emojax's bundled SEV splits",
            "false_match_rate": false_match_rates(judge.log_probs(texts))}


def throughput(judge: OfflineJudge, rows: Sequence[LabelledText]) -> dict[str, Any]:
    texts, targets = [r.text for r in rows], [r.target for r in rows]
    judge(texts[:50], targets[:50])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    judge(texts, targets)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"texts": len(texts), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "texts_per_wall_s": round(len(texts) / wall), "texts_per_cpu_s": round(len(texts) / cpu)}


def main(argv: Sequence[str]) -> None:
    del argv
    data_dir, out = Path(FLAGS.data_dir), Path(FLAGS.out)
    rows, hashes, dropped = load_labelled(data_dir)
    spec = FeatureSpec(n_buckets=FLAGS.n_buckets)
    logging.info("%d labelled texts (%d judge-error rows dropped); hashing features", len(rows), dropped)
    features = featurize([r.text for r in rows], spec)

    held_out = held_out_figures(cross_validated_log_probs(features, rows), rows)
    logging.info("held out: %s", json.dumps(held_out, indent=1))

    weights, bias = fit(features, rows)
    meta = {
        "format": FORMAT_VERSION, "version": MODEL_VERSION, "classes": list(CLASSES),
        "features": spec.to_json(),
        "training_command": " ".join(["python -m experiments.train_judge", *sys.argv[1:]]),
        "hyperparameters": {"l2": FLAGS.l2, "none_weight": FLAGS.none_weight, "max_steps": FLAGS.max_steps,
                            "neutral_sentences": FLAGS.neutral_sentences, "neutral_weight": FLAGS.neutral_weight},
        "data": {"files": hashes, "texts": len(rows), "judge_error_rows_dropped": dropped,
                 "labels": "gpt-4o-mini verdicts with the method.md §4.3 prompt"},
        "held_out": held_out,
    }
    artifact = out / DEFAULT_ARTIFACT.name
    write_npz(artifact, {"weights": weights, "bias": bias.astype(np.float32),
                         "target_offset": np.zeros(len(EMOTIONS), np.float32)}, meta)
    judge = OfflineJudge(artifact)
    meta["unseen_neutral_sentences"] = unseen_neutral_false_matches(judge)
    meta["throughput"] = throughput(judge, [r for r in rows if r.source == "prompted"])
    meta["throughput"]["note"] = "features + inference on the prompted replies, one process"
    meta["artifact_sha256"] = judge.sha256
    meta["probe"] = {"texts": list(PROBE_TEXTS),
                     "log_probs": np.round(judge.log_probs(PROBE_TEXTS), 5).tolist()}
    write_json(artifact.with_suffix(".json"), meta)
    logging.info("wrote %s (%.1f MB) and %s", artifact, artifact.stat().st_size / 2**20,
                 artifact.with_suffix(".json"))


if __name__ == "__main__":
    app.run(main)
