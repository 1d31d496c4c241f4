"""Train the offline emotion judge and the fluency rule; write their artefacts with held-out figures.

    python -m experiments.judge_training.train [--data_dir=../shared/data/official] [--labels_dir=../shared/data/labels]

The judge (emojax.judge.offline) is a 7-way softmax regression over hashed n-grams, fitted on
  - Llama-3.2-3B-Instruct replies labelled by gpt-4o-mini (prompted, and written with no emotion instruction),
  - the SEV scenario and event sentences as extra "none" texts (--neutral_sentences),
  - the default model's replies rated by careful reading (emojax's own prompting, steering and circuit
    modulation): labelled with the target when they match, else with the emotion they mainly express, else
    "none"; weighted (--rated_weight) so that they weigh as much as the official replies together.
Its one tuned number, the offset of the match rule, is chosen by an inner cross-validation inside each
training fold (experiments.judge_training.cross_validation); the shipped offset is the one the outer held-out predictions favour.

The fluency rule (emojax.judge.fluency) is a logistic regression over the rated replies' perplexity under
the default model given their own prompts (one forward, cached), distinct-1, distinct-2 and repetition,
against the rated `fluent`. No number of it is tuned.

Every figure comes from 5-fold cross-validation by scenario (skeleton_id) over all texts together; the
shipped models are then refitted on all the data.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import flags, logging

from emojax.data.sev import BUNDLED_DIR, BUNDLED_SPLITS, EMOTIONS
from emojax.judge.artifact import write_manifest
from emojax.judge.features import FeatureSpec, featurize
from emojax.judge.fluency import DEFAULT_RULE, RULE_FEATURES, FluencyRule, measures, rule_features
from emojax.judge.offline import CLASSES, DEFAULT_ARTIFACT, FORMAT_VERSION, OfflineJudge
from emojax.launch.launcher import run_launcher
from emojax.runs.atomic import write_json, write_npz
from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training import offline_fit
from experiments.judge_training.data import load_official, load_rated, sev_sentences
from experiments.judge_training.offline_fit import (PROBE_TEXTS, cross_validated_fluent, false_match_rates, fit, fit_rule,
                                                    judge_figures, nested_cross_validation, rated_perplexities,
                                                    rated_weight, row_matches)

MODEL_VERSION = "2.0"

FLAGS = flags.FLAGS
offline_fit.define_flags()


def unseen_neutral_false_matches(judge: OfflineJudge) -> dict[str, Any]:
    """Match rates, per target, of the bundled SEV sentences (never used in training)."""
    texts = [text for split in BUNDLED_SPLITS for text, _ in sev_sentences(BUNDLED_DIR / f"{split}.jsonl")]
    logp = judge.log_probs(texts)
    return {"texts": f"{len(texts)} scenario and event sentences of emojax's bundled SEV splits",
            "false_match_rate": false_match_rates(logp, judge.target_offset[0])}


def main(argv: Sequence[str]) -> None:
    del argv
    data_dir, labels_dir, out = Path(FLAGS.data_dir), Path(FLAGS.labels_dir), Path(FLAGS.out)
    official, hashes, dropped = load_official(data_dir, FLAGS.neutral_sentences)
    rated, rated_hashes = load_rated(labels_dir)
    rows = official + rated
    spec = FeatureSpec(n_buckets=FLAGS.n_buckets)
    logging.info("%d labelled texts (%d rated; %d judge-error rows dropped); hashing features", len(rows),
                 len(rated), dropped)
    features = featurize([r.text for r in rows], spec)
    folds = judge_cv.scenario_folds([r.scenario for r in rows], FLAGS.folds, FLAGS.seed)
    protocol = (f"{FLAGS.folds}-fold cross-validation by scenario (skeleton_id), seed {FLAGS.seed}; the match "
                f"offset chosen in each training part by {FLAGS.inner_folds} inner folds")

    logp, row_offset, chosen = nested_cross_validation(features, rows, folds)
    match = row_matches(logp, rows, row_offset)
    held_out = {"protocol": protocol, "offset_per_fold": chosen, **judge_figures(logp, rows, row_offset, match)}

    is_rated = np.array([r.source == "rated" for r in rows])
    labels_sha = next(iter(rated_hashes.values()))
    ppl, model_about = rated_perplexities(rated, labels_sha)
    rule_x = rule_features(measures(ppl, [r.text for r in rated]))
    truth_fluent = np.array([r.fluent for r in rated])
    held_fluent = cross_validated_fluent(rule_x, truth_fluent, folds[is_rated])
    held_out["rated"] = judge_cv.fluency_figures(rated, match[is_rated], held_fluent)
    logging.info("held out: %s", json.dumps(held_out, indent=1))

    offset = judge_cv.best_offset(logp, rows)
    weights, bias = fit(features, rows)
    command = " ".join(["python -m experiments.judge_training.train", *sys.argv[1:]])
    all_hashes = {**hashes, **rated_hashes}
    meta = {
        "format": FORMAT_VERSION, "version": MODEL_VERSION, "classes": list(CLASSES), "features": spec.to_json(),
        "training_command": command,
        "hyperparameters": {"l2": FLAGS.l2, "none_weight": FLAGS.none_weight, "max_steps": FLAGS.max_steps,
                            "rated_weight": round(rated_weight(rows), 4),
                            "neutral_sentences": FLAGS.neutral_sentences, "neutral_weight": FLAGS.neutral_weight,
                            "offset": offset, "offset_grid": [min(judge_cv.OFFSET_GRID), max(judge_cv.OFFSET_GRID)]},
        "data": {"files": all_hashes, "texts": len(rows), "rated_texts": len(rated),
                 "judge_error_rows_dropped": dropped,
                 "labels": "gpt-4o-mini verdicts with the method.md §4.3 prompt (official); careful reading (rated)"},
        "held_out": held_out,
    }
    artifact = out / DEFAULT_ARTIFACT.name
    write_npz(artifact, {"weights": weights, "bias": bias.astype(np.float32),
                         "target_offset": np.full(len(EMOTIONS), offset, np.float32)}, meta)
    write_manifest(out, [artifact])
    judge = OfflineJudge(artifact)
    meta["unseen_neutral_sentences"] = unseen_neutral_false_matches(judge)
    meta["artifact_sha256"] = judge.sha256
    meta["probe"] = {"texts": list(PROBE_TEXTS), "log_probs": np.round(judge.log_probs(PROBE_TEXTS), 5).tolist()}
    write_json(artifact.with_suffix(".json"), meta)

    rule = fit_rule(rule_x, truth_fluent)
    rule_meta = {"training_command": command, **model_about, "l2": FLAGS.fluency_l2,
                 "data": {"files": rated_hashes, "replies": len(rated)},
                 "held_out": {"protocol": protocol, **{c: f["fluent"] for c, f in held_out["rated"].items()}}}
    rule = FluencyRule(rule.mean, rule.scale, rule.weights, rule.bias, meta=rule_meta)
    write_json(out / DEFAULT_RULE.name, rule.to_json())
    logging.info("wrote %s (%.1f MB), %s and %s (features %s)", artifact, artifact.stat().st_size / 2**20,
                 artifact.with_suffix(".json"), out / DEFAULT_RULE.name, ", ".join(RULE_FEATURES))


if __name__ == "__main__":
    run_launcher(main)
