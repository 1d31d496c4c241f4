"""What the fluency rule loses when the reply is read without its prompt: the price of one shared forward.

    python -m experiments.judge_training.fluency_context [--gemma=gemma-3-270m]

The reader judge reads each reply alone; the fluency pass reads it after its own prompt. One forward could serve
both only if one of them changed its input. This measures the fluency side of that change: the fluency rule
(emojax.judge.fluency, the same four features and fit as experiments.judge_training.train) with the reply's
perplexity given its prompt (`prompt`, the shipped measure) against its perplexity read alone (`alone`,
emojax.judge.perplexity.alone_batch: the tokens after the first, given the first), on

  - the default model's 1,200 rated training replies, cross-validated on the trainer's folds (by scenario);
  - the 432 rated replies of a quick run on the default model (scenarios the rule never saw), rule fitted on all
    1,200;
  - Gemma-3-270M's 432 rated replies, under Gemma's own perplexities, with that same rule (the pipeline's own use
    of the shipped rule on a second model).

Each reports `fluent` (against careful reading) and `fluent_match` with careful reading's match, so only the
fluency verdict differs. For the pipeline replies the recorded run perplexity is checked against the `prompt`
one recomputed here. Figures go to --context_out (fluency_context_figures.json beside this file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import flags, logging

from emojax.judge.fluency import RULE_FEATURES, measures, rule_features
from emojax.judge.perplexity import alone_batch, batched_perplexities, perplexities
from emojax.launch.launcher import run_launcher
from emojax.runs.atomic import write_json
from emojax.runs.validate import read_jsonl
from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training import offline_fit
from experiments.judge_training.data import (GEMMA_FILE, SMOLLM2_QUICK_FILE, LabelledText, load_official, load_pipeline_rated,
                                             load_rated)

FLAGS = flags.FLAGS
CONTEXTS = ("prompt", "alone")

offline_fit.define_flags()
flags.DEFINE_string("gemma", "gemma-3-270m", "The second model, whose rated replies are scored ('' to skip).")
flags.DEFINE_string("context_out", str(Path(__file__).resolve().parent / "fluency_context_figures.json"),
                    "Where the figures go.")


def context_perplexities(model: Any, rows: Sequence[LabelledText], batch_size: int) -> dict[str, np.ndarray]:
    """{context: perplexity of each reply under `model`}: given its prompt, and read alone."""
    texts = [r.text for r in rows]
    return {"prompt": perplexities(model, [r.prompt for r in rows], texts, batch_size=batch_size),
            "alone": batched_perplexities(model, alone_batch(model.tokenizer, texts), batch_size=batch_size)}


def fluency_only_figures(rows: Sequence[LabelledText], fluent: np.ndarray) -> dict[str, Any]:
    """Per condition and overall: `fluent` against careful reading, and `fluent_match` with careful reading's
    match (only the fluency verdict can differ), with the judged and read fluent rates."""
    truth_fluent = np.array([r.fluent for r in rows])
    truth_match = np.array([r.match for r in rows])
    condition = np.array([r.condition for r in rows])
    out = {}
    for name in ("prompting", "steering", "circuit", "overall"):
        mask = np.ones(len(rows), bool) if name == "overall" else condition == name
        out[name] = {"fluent": judge_cv.binary_figures(truth_fluent[mask], fluent[mask]),
                     "fluent_match": judge_cv.binary_figures((truth_match & truth_fluent)[mask],
                                                             (truth_match & fluent)[mask]),
                     "fluent_rate": {"judged": _rate(fluent[mask]), "read": _rate(truth_fluent[mask])}}
    return out


def log_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of log a and log b over the replies where both are finite (not empty)."""
    both = np.isfinite(a) & np.isfinite(b)
    return round(float(np.corrcoef(np.log(a[both]), np.log(b[both]))[0, 1]), 4)


def _rate(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None


def recorded_check(path: Path, prompt_ppl: np.ndarray) -> dict[str, Any]:
    """How far the run's recorded perplexities are from the `prompt` ones recomputed here."""
    recorded = np.array([np.nan if r["run_verdict"].get("perplexity") is None else r["run_verdict"]["perplexity"]
                         for r in read_jsonl(path)], np.float64)
    both = np.isfinite(recorded) & np.isfinite(prompt_ppl)
    relative = np.abs(np.log(prompt_ppl[both]) - np.log(recorded[both]))
    return {"compared": int(both.sum()), "max_abs_log_ratio": round(float(relative.max(initial=0.0)), 6)}


def held_out_figures(model: Any, path: Path, source: str, rules: dict[str, Any]) -> dict[str, Any]:
    rows, _, hashes = load_pipeline_rated(path, source)
    ppl = context_perplexities(model, rows, FLAGS.batch_size)
    texts = [r.text for r in rows]
    return {"model": model.name, "files": hashes, "recorded_perplexity": recorded_check(path, ppl["prompt"]),
            **{c: fluency_only_figures(rows, rules[c].fluent(measures(ppl[c], texts))) for c in CONTEXTS}}


def main(argv: Sequence[str]) -> None:
    del argv
    from emojax.loading import load_model

    official, _, _ = load_official(Path(FLAGS.data_dir), FLAGS.neutral_sentences)
    rated, rated_hashes = load_rated(Path(FLAGS.labels_dir))
    rows = official + rated
    folds = judge_cv.scenario_folds([r.scenario for r in rows], FLAGS.folds, FLAGS.seed)[len(official):]
    model = load_model(FLAGS.model)
    labels_sha = next(iter(rated_hashes.values()))
    texts = [r.text for r in rated]
    logging.info("rated training replies: perplexity given the prompt (cached) and read alone")
    ppl = {"prompt": offline_fit.rated_perplexities(rated, labels_sha)[0],
           "alone": batched_perplexities(model, alone_batch(model.tokenizer, texts), batch_size=FLAGS.batch_size)}
    truth = np.array([r.fluent for r in rated])
    features = {c: rule_features(measures(ppl[c], texts)) for c in CONTEXTS}
    rules = {c: offline_fit.fit_rule(features[c], truth) for c in CONTEXTS}
    figures: dict[str, Any] = {
        "protocol": (f"fluency rule of experiments.judge_training.train (l2 {FLAGS.fluency_l2}); cross-validated on "
                     f"its {FLAGS.folds} scenario folds (seed {FLAGS.seed}); held-out files scored by the rule "
                     "fitted on all rated training replies"),
        "log_perplexity_correlation": log_correlation(ppl["prompt"], ppl["alone"]),
        "rules": {c: {"weights": [round(w, 4) for w in rules[c].weights], "features": list(RULE_FEATURES)}
                  for c in CONTEXTS},
        "cross_validated": {"model": model.name, "files": rated_hashes, **{
            c: fluency_only_figures(rated, offline_fit.cross_validated_fluent(features[c], truth, folds))
            for c in CONTEXTS}},
        "smollm2_quick_test": held_out_figures(model, SMOLLM2_QUICK_FILE, "rated", rules),
    }
    if FLAGS.gemma:
        figures["gemma_quick_test"] = held_out_figures(load_model(FLAGS.gemma), GEMMA_FILE, "gemma", rules)
    write_json(Path(FLAGS.context_out), figures)
    for part in ("cross_validated", "smollm2_quick_test", "gemma_quick_test"):
        for c in CONTEXTS:
            if part in figures:
                f = figures[part][c]["overall"]["fluent"]
                logging.info("%s %s: fluent agreement %.1f%%, kappa %.2f", part, c, 100 * f["agreement"], f["kappa"])


if __name__ == "__main__":
    run_launcher(main)
