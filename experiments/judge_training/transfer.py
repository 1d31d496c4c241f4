"""Cross-model validation of match-judge designs, and the reader judge's artefact.

    python -m experiments.judge_training.transfer [--designs=ngram,reader:8-17-26,...] [--ship=combined:14]

Designs: `ngram` (today's offline judge, refitted), `reader:<layers>` (layers joined by '-'; a linear head on the reader's
mean-pooled resid_post at those layers) and `combined:<layers>` (the mean of both heads' log-probabilities,
weight --combined_ngram_weight). Every design is fitted with the trainer's labels and sample weights
(experiments.judge_training.offline_fit) and the match offset fixed at 0 (--tune_offset: each fold model's offset
tuned on its own training text): nothing is tuned on held-out text.

Protocols, each over the same 5 scenario folds (all texts of a scenario in one fold), fold k predicted by
a fit on the other folds restricted to the training sources (leave one model's replies out):
  no_llama    trained on the SmolLM2 and Gemma rated replies + SEV sentences, tested on the Llama replies
  no_smollm2  trained on the Llama replies, the Gemma rated replies + SEV sentences, tested on SmolLM2's
  no_gemma    trained on the Llama replies, the SmolLM2 rated replies + SEV sentences, tested on Gemma's
  all         trained on every source, tested on every source
The Gemma-3-270M replies (labels/README.md) weigh 1 each (--balance_models: every model's replies weigh as much in
total as the most numerous model's); their fluent_match figures use the fluency verdict their run recorded (the shipped
rule on Gemma's own perplexities). `nested_choice` gives, for each protocol, the design the other protocols' figures
choose and its figures there: a choice of design that the reported model took no part in.
--reader reads with another model (its every third layer); --extra_readings adds, for training only, every other
careful reading of the small models in labels/, each taking its scenario's fold.
--drop_training_sources leaves sources out of every protocol's training (they are still tested where they were).
SEV sentences are held out by fold in every protocol (false matches). Two bounds sit beside the designs
(transfer_bounds): `coverage_ceiling`, what no design of a protocol can reach (a target emotion that no training
label of its fold carries is never judged a match), and each design's `offset_ceiling`, the best its verdicts on
the left-out model get under any one match offset chosen with that model's own labels. The figures go to
--figures_out; with --ship, the named design is refitted on all texts and written as emojax/judge/artifacts/reader_judge.npz.
--llama_steered_labels=careful teaches Llama's steered replies by careful reading (labels/README.md) instead of
gpt-4o-mini's verdicts; their figures are given against both. `shipped_on_unseen`: the shipped judges against careful
reading of replies neither was fitted on. The shipped reader judge:
    python -m experiments.judge_training.transfer --llama_steered_labels=careful --ship=combined:14 \
        --figures_out=experiments/judge_training/transfer_figures_careful.json
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import flags, logging

from emojax.data.sev import BUNDLED_DIR, BUNDLED_SPLITS, EMOTIONS
from emojax.evaluation.stats import wilson_interval
from emojax.judge.artifact import write_manifest
from emojax.judge.features import FeatureSpec, featurize
from emojax.judge.fit import lda_from_moments, weighted_moments
from emojax.judge.fluency import measures, rule_features
from emojax.judge.offline import CLASSES, DEFAULT_ARTIFACT, OfflineJudge, log_softmax, verdicts
from emojax.judge.reader import READER_BATCH_SIZE, ReaderSpec
from emojax.judge.reader_judge import DEFAULT_READER_ARTIFACT, FORMAT_VERSION, ReaderJudge
from emojax.launch.launcher import run_launcher
from emojax.runs.atomic import write_json, write_npz
from emojax.weights.cache import resolve_cache_dir
from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training import offline_fit
from experiments.judge_training.data import (UNSEEN_READINGS, LabelledText, double_readings, load_extra_readings,
                                             load_gemma, load_llama_careful, load_llama_reading, load_official,
                                             load_pipeline_rated, load_rated, sev_sentences)
from experiments.judge_training.llama_reading import (against_careful, careful_labels, careful_matches,
                                                      census_figures, judged_on_reading, reading_figures, sample_rows)
from experiments.judge_training.reader_cache import MAX_TOKENS, cached_features, candidate_layers
from experiments.judge_training.transfer_bounds import (GOAL_FIGURES, coverage_figures, match_margins, offset_ceiling,
                                                        reply_subsets)

FLAGS = flags.FLAGS
MODEL_VERSION = "1.0"
PROBE_TEXTS = offline_fit.PROBE_TEXTS

offline_fit.define_flags()

flags.DEFINE_list("designs", ["ngram", "reader:14", "reader:8-17-26", "combined:14", "combined:8-17-26"], "Designs to cross-validate (layers joined by '-').")
flags.DEFINE_float("shrinkage", 0.3, "Shrinkage of the reader head's pooled covariance towards its diagonal.")
flags.DEFINE_float("none_prior", None, "The reader head's prior of `none` (each emotion (1 - p) / 6) in place of "
                   "the training share of each class; None: the training shares.")
flags.DEFINE_bool("balance_models", False, "Weigh every model's replies as much in total as the most numerous "
                  "model's (offline_fit.balanced_scales); default: the trainer's weights (Gemma's replies 1 each).")
flags.DEFINE_float("combined_ngram_weight", 0.5, "Weight of the n-gram log-probabilities in a combined design.")
flags.DEFINE_bool("fluency", True, "Cross-validate the fluency rule too (the rated replies' perplexities, cached) "
                  "for fluent_match figures.")
flags.DEFINE_bool("gemma_replies", True, "Add Gemma-3-270M's rated replies (labels/) as a third source.")
flags.DEFINE_string("reader", None, "The model whose pooled states the reader designs read, e.g. gemma-3-270m "
                    "(layers: every third from the third); default --model, the embedded SmolLM2. Not with --ship.")
flags.DEFINE_bool("extra_readings", False, "Train (never test) on every other careful reading of the small models' "
                  "replies in labels/ (data.load_extra_readings), each weighing 1, wherever their model is trained on.")
flags.DEFINE_enum("llama_steered_labels", "gpt-4o-mini", ["gpt-4o-mini", "careful"], "What Llama's steered "
                  "replies are trained on: gpt-4o-mini's verdicts (the paper's) or careful reading of every one "
                  "(labels/llama32_3b_steered_*.jsonl); their figures are given against both either way.")
flags.DEFINE_bool("tune_offset", False, "Tune each fold model's match offset on its own training text (an inner "
                  "cross-validation over the other folds; the trainer's grid; the mean match kappa of the training "
                  "models' un-prompted and rated replies against what they were taught) in place of offset 0.")
flags.DEFINE_list("drop_training_sources", [], "Sources no protocol trains on (e.g. unprompted: Llama's steered "
                  "replies); they are still tested where their protocol tests them. Not with --ship.")
flags.DEFINE_string("ship", None, "Design to refit on all texts and write as reader_judge.npz.")
flags.DEFINE_string("figures_out", str(Path(__file__).resolve().parent / "transfer_figures.json"),
                    "Where the cross-validated figures go.")


def extended_folds(scenarios: Sequence[str], extra_scenarios: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Scenario folds of the tested sources, unchanged by the extra readings: an extra text takes its scenario's
    fold, and the scenarios only extra texts hold are dealt round the k folds (seeded), so extras never move a
    tested text to another fold."""
    folds = judge_cv.scenario_folds(scenarios, k, seed)
    fold_of = dict(zip(scenarios, folds.tolist()))
    new = sorted(set(extra_scenarios) - set(fold_of))
    np.random.default_rng(seed).shuffle(new)
    fold_of.update({s: i % k for i, s in enumerate(new)})
    return np.concatenate([folds, np.array([fold_of[s] for s in extra_scenarios], np.int64)])


def protocols(dropped: Sequence[str] = ()) -> dict[str, tuple[set[str], set[str]]]:
    """judge_cv.PROTOCOLS with the `dropped` sources (--drop_training_sources) out of every protocol's training."""
    unknown = sorted(set(dropped) - judge_cv.EVERY_SOURCE)
    if unknown:
        raise ValueError(f"--drop_training_sources: {unknown[0]!r}; expected sources among "
                         f"{sorted(judge_cv.EVERY_SOURCE)}")
    return {p: (train - set(dropped), test) for p, (train, test) in judge_cv.PROTOCOLS.items()}


def parse_design(design: str, candidates: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    kind, _, layers = design.partition(":")
    if kind == "ngram" and not layers:
        return kind, ()
    chosen = tuple(int(x) for x in layers.split("-") if x)
    if kind not in ("reader", "combined") or not chosen or not set(chosen) <= set(candidates):
        raise ValueError(f"--designs: {design!r}; expected ngram, reader:<layers> or combined:<layers> with "
                         f"layers among the reader's {tuple(candidates)}")
    return kind, chosen


def layer_columns(layers: Sequence[int], d_model: int, candidates: Sequence[int]) -> np.ndarray:
    """Columns of `layers` in cached features that hold the `candidates` layers' pooled states side by side."""
    return np.concatenate([np.arange(d_model) + list(candidates).index(l) * d_model for l in layers])


def source_scales(rows: Sequence[LabelledText]) -> dict[str, float]:
    """Weight of each reply of the rated sources among the fitted `rows` (offline_fit.sample_weights' scales)."""
    if not FLAGS.balance_models:
        return {"rated": offline_fit.rated_weight(rows)}
    scales = offline_fit.balanced_scales(rows)
    if FLAGS.rated_weight is not None and "rated" in scales:
        scales["rated"] = FLAGS.rated_weight
    return scales


def group_moments(x: np.ndarray, rows: Sequence[LabelledText], folds: np.ndarray
                  ) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Moments of each (fold, source) group, every source at unit scale: a fit on a union of groups sums them."""
    labels, weight = offline_fit.sample_weights(rows, scales={})
    source = np.array([r.source for r in rows])
    out = {}
    for k in range(FLAGS.folds):
        for s in sorted(judge_cv.PROTOCOLS["all"][0]):
            members = np.flatnonzero((folds == k) & (source == s))
            out[(k, s)] = weighted_moments(x[members], labels[members], weight[members], len(CLASSES))
    return out


def fit_from_groups(moments: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
                    groups: Sequence[tuple[int, str]], scales: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The reader head (LDA) of the union of `groups`, each source's moments multiplied by its scale."""
    parts = [[m * scales.get(g[1], 1.0) for m in moments[g]] for g in groups]
    second, sums, counts = (sum(p[i] for p in parts) for i in range(3))
    return lda_from_moments(second, sums, counts, shrinkage=FLAGS.shrinkage, prior=class_prior())


def class_prior() -> np.ndarray | None:
    """The reader head's class prior [7] (CLASSES order), or None for the training shares."""
    if FLAGS.none_prior is None:
        return None
    if not 0.0 < FLAGS.none_prior < 1.0:
        raise ValueError(f"--none_prior: {FLAGS.none_prior}; expected a probability in (0, 1)")
    return np.array([FLAGS.none_prior if c == "none" else (1.0 - FLAGS.none_prior) / len(EMOTIONS) for c in CLASSES])


def combine(reader_logp: np.ndarray, ngram_logp: np.ndarray, weight: float) -> np.ndarray:
    return log_softmax((1 - weight) * reader_logp + weight * ngram_logp)


def held_out_log_probs(design: str, rows: Sequence[LabelledText], folds: np.ndarray, reader_x: np.ndarray,
                       ngram_logp: dict[str, np.ndarray], d_model: int, candidates: Sequence[int],
                       ngram_inner: dict[str, np.ndarray] | None = None
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """({protocol: [n, 7] log-probs of the rows that protocol tests, NaN elsewhere}, and with `ngram_inner` (the
    n-gram design's inner_splits log-probs) the design's own {protocol: [folds, n, 7]} of the same splits)."""
    kind, layers = parse_design(design, candidates)
    if kind == "ngram":
        return ngram_logp, ngram_inner
    x = reader_x[:, layer_columns(layers, d_model, candidates)].astype(np.float64)
    x -= x.mean(axis=0)  # numerics only: LDA is unchanged by a shift of every text
    moments = group_moments(x, rows, folds)
    source = np.array([r.source for r in rows])

    def predict(protocol: str, train_sources: set[str], left_out: set[int], rows_out: np.ndarray,
                ngram: np.ndarray) -> np.ndarray:
        fit_rows = np.flatnonzero(~np.isin(folds, list(left_out)) & np.isin(source, list(train_sources)))
        groups = [(j, s) for j in range(FLAGS.folds) for s in sorted(train_sources) if j not in left_out]
        w, b = fit_from_groups(moments, groups, source_scales([rows[i] for i in fit_rows]))
        logp = log_softmax(x[rows_out] @ w + b).astype(np.float32)
        return combine(logp, ngram[rows_out], FLAGS.combined_ngram_weight) if kind == "combined" else logp

    out, inner = {}, ({} if ngram_inner is not None else None)
    for protocol, (train_sources, test_sources) in protocols(FLAGS.drop_training_sources).items():
        logp = np.full((len(rows), len(CLASSES)), np.nan, np.float32)
        for k in range(FLAGS.folds):
            test = np.flatnonzero((folds == k) & np.isin(source, list(test_sources)))
            logp[test] = predict(protocol, train_sources, {k}, test, ngram_logp[protocol])
        out[protocol] = logp
        if inner is not None:
            inner[protocol] = np.full((FLAGS.folds, len(rows), len(CLASSES)), np.nan, np.float32)
            for k, j, scored in inner_splits(folds, source, train_sources):
                inner[protocol][k, scored] = predict(protocol, train_sources, {k, j}, scored, ngram_inner[protocol][k])
        logging.info("%s / %s: held-out predictions done", design, protocol)
    return out, inner


# The replies each fold model's offset is tuned on (--tune_offset): the trainer's un-prompted and rated replies,
# and Gemma's rated replies.
SCORED_SOURCES = ("unprompted", "rated", "gemma")


def inner_splits(folds: np.ndarray, source: np.ndarray, train_sources: set[str]
                 ) -> list[tuple[int, int, np.ndarray]]:
    """(outer fold k, inner fold j, the scored training rows of fold j) for every k and j != k: the inner
    cross-validation of fold k's model runs over the other folds, each predicted by a fit without folds k and j."""
    scored = np.isin(source, [s for s in SCORED_SOURCES if s in train_sources])
    k_folds = int(folds.max()) + 1
    return [(k, j, np.flatnonzero(scored & (folds == j))) for k in range(k_folds) for j in range(k_folds) if j != k]


def tuned_row_offsets(inner: dict[str, np.ndarray], held_out: dict[str, np.ndarray], rows: Sequence[LabelledText],
                      folds: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """({protocol: the offset of each tested row's fold model}, {protocol: the offset chosen for each fold}): each
    fold's offset is judge_cv.taught_offset on its inner cross-validation, on the scored sources it trains on."""
    source = np.array([r.source for r in rows])
    row_offsets, chosen = {}, {}
    for protocol, (train_sources, _) in protocols(FLAGS.drop_training_sources).items():
        row_offsets[protocol] = np.zeros(len(rows), np.float32)
        chosen[protocol] = []
        splits = inner_splits(folds, source, train_sources)
        for k in range(FLAGS.folds):
            scored = np.flatnonzero(~np.isnan(inner[protocol][k, :, 0]))
            expected = sum(len(rows_j) for k_, _, rows_j in splits if k_ == k)
            if len(scored) != expected:  # a cached inner fit of other scored sources would leave rows unpredicted
                raise ValueError(f"{protocol} fold {k}: {len(scored)} inner predictions for {expected} scored rows")
            offset = judge_cv.taught_offset(inner[protocol][k, scored], [rows[i] for i in scored],
                                            [s for s in SCORED_SOURCES if s in train_sources])
            row_offsets[protocol][(folds == k) & ~np.isnan(held_out[protocol][:, 0])] = offset
            chosen[protocol].append(offset)
    return row_offsets, chosen


def ngram_cache_path(data_hash: str, protocol: str, train_sources: set[str], inner: bool) -> Path:
    # the training sources join the key only when some are dropped, and `inner` only when set, so the default
    # run keeps its cached fits
    dropped = sorted(judge_cv.PROTOCOLS[protocol][0] - train_sources)
    key = hashlib.sha256(json.dumps([data_hash, protocol, FLAGS.folds, FLAGS.seed, FLAGS.n_buckets, FLAGS.l2,
                                     FLAGS.none_weight, FLAGS.neutral_weight, FLAGS.rated_weight,
                                     FLAGS.max_steps, FLAGS.balance_models, *([dropped] if dropped else []),
                                     *(["inner"] if inner else [])]).encode()).hexdigest()
    return resolve_cache_dir() / "judge" / f"ngram-transfer-{key[:16]}.npz"


def ngram_held_out(rows: Sequence[LabelledText], folds: np.ndarray, data_hash: str, inner: bool = False
                   ) -> dict[str, np.ndarray]:
    """The n-gram design's held-out log-probs per protocol ([n, 7]; with `inner`, those of inner_splits,
    [folds, n, 7]), each cached (5 sparse fits take minutes, the 20 inner ones longer)."""
    features = None
    source = np.array([r.source for r in rows])
    out = {}
    for protocol, (train_sources, test_sources) in protocols(FLAGS.drop_training_sources).items():
        path = ngram_cache_path(data_hash, protocol, train_sources, inner)
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                out[protocol] = data["log_probs"]
            continue
        if features is None:
            features = featurize([r.text for r in rows], FeatureSpec(n_buckets=FLAGS.n_buckets))
        if inner:
            logp = np.full((FLAGS.folds, len(rows), len(CLASSES)), np.nan, np.float32)
            for k, j, scored in inner_splits(folds, source, train_sources):
                fit_rows = np.flatnonzero(~np.isin(folds, [k, j]) & np.isin(source, list(train_sources)))
                logp[k, scored] = offline_fit.fit_predict(features, rows, fit_rows, scored, source_scales)
        else:
            logp = np.full((len(rows), len(CLASSES)), np.nan, np.float32)
            for k in range(FLAGS.folds):
                fit_rows = np.flatnonzero((folds != k) & np.isin(source, list(train_sources)))
                test = np.flatnonzero((folds == k) & np.isin(source, list(test_sources)))
                logp[test] = offline_fit.fit_predict(features, rows, fit_rows, test, source_scales)
        write_npz(path, {"log_probs": logp})
        out[protocol] = logp
    return out


def rate_figures(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Agreement, kappa, counts, and calibration: the judged rate against the reference rate and its interval."""
    figures = judge_cv.binary_figures(truth, pred)
    n = len(truth)
    if n:
        low, high = wilson_interval(int(truth.sum()), n)
        figures.update(judged_rate=round(float(pred.mean()), 4), reference_rate=round(float(truth.mean()), 4),
                       reference_interval=[round(low, 4), round(high, 4)])
    return figures


def protocol_figures(logp: np.ndarray, rows: Sequence[LabelledText], fluent: np.ndarray | None,
                     careful: np.ndarray, row_offset: np.ndarray) -> dict[str, Any]:
    """A protocol's figures on every reply subset it tests, each row at its fold model's offset (`row_offset`: 0
    unless --tune_offset), with Llama's steered replies also against careful reading (`careful`:
    llama_reading.careful_matches), and its neutral false matches."""
    tested = ~np.isnan(logp[:, 0])
    source = np.array([r.source for r in rows])
    truth = np.array([r.match for r in rows])
    match = np.zeros(len(rows), np.int64)
    margins = match_margins(logp[tested], [r for r, t in zip(rows, tested) if t])
    match[tested] = margins < row_offset[tested]  # the match rule: log p(target) + offset beats every other class
    out: dict[str, Any] = {}
    for name, mask in reply_subsets(rows).items():
        mask = mask & tested
        if mask.any():
            out[name] = {"match": rate_figures(truth[mask], match[mask])}
            if not name.startswith("llama") and fluent is not None:
                truth_fluent = np.array([r.fluent for r in rows])
                out[name]["fluent_match"] = rate_figures((truth & truth_fluent)[mask], (match & fluent)[mask])
    steered = (source == "unprompted") & tested
    if steered.any():
        out["llama_steered_careful"] = {"match": rate_figures(careful[steered], match[steered])}
    neutral = (source == "neutral") & tested
    rates = offline_fit.false_match_rates(logp[neutral], row_offset[neutral])
    out["neutral_false_match"] = {"n": int(neutral.sum()), "per_target": rates, "max": max(rates.values()),
                                  "mean": round(float(np.mean(list(rates.values()))), 4)}
    return out


# The figure each leave-one-source-out protocol is judged by: the first goal on the source it leaves out.
HEADLINES = {protocol: goals[0] for protocol, goals in GOAL_FIGURES.items()}


def headline_kappa(design_figures: dict[str, Any], protocol: str) -> float | None:
    """A design's headline kappa on a protocol; None where the run has none (--nogemma_replies, --nofluency)."""
    subset, verdict = HEADLINES[protocol]
    return design_figures[protocol].get(subset, {}).get(verdict, {}).get("kappa")


def nested_choice(designs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For each protocol, the design that the *other* protocols' headline kappas choose (their mean; a tie goes
    to the first design name in sort order), and its figures on the protocol: what choosing a design by
    leave-one-source-out figures gives on a model that took no part in the choice (choosing by every
    protocol's figures, then reporting them, flatters them). Protocols without a headline figure in this run
    neither choose nor are reported."""
    present = [p for p in HEADLINES if designs and all(headline_kappa(f, p) is not None for f in designs.values())]
    out = {}
    for protocol in present:
        others = [p for p in present if p != protocol]
        if not others:
            continue
        scores = {d: float(np.mean([headline_kappa(f, p) for p in others])) for d, f in designs.items()}
        chosen = max(sorted(scores), key=lambda d: scores[d])
        subset, verdict = HEADLINES[protocol]
        out[protocol] = {"chosen_by": others, "design": chosen, "score": round(scores[chosen], 4),
                         "figures": designs[chosen][protocol][subset][verdict]}
    return out


def held_out_fluent(rated: Sequence[LabelledText], rated_folds: np.ndarray, labels_sha: str) -> np.ndarray:
    """The fluency rule's verdict on each rated reply, cross-validated on the same scenario folds."""
    ppl, _ = offline_fit.rated_perplexities(rated, labels_sha)
    x = rule_features(measures(ppl, [r.text for r in rated]))
    return offline_fit.cross_validated_fluent(x, np.array([r.fluent for r in rated]), rated_folds)


def ship(design: str, rows: Sequence[LabelledText], reader_x: np.ndarray, model: Any, figures: dict[str, Any],
         hashes: dict[str, str]) -> None:
    candidates = candidate_layers(model.config.n_layers)
    kind, layers = parse_design(design, candidates)
    if kind == "ngram":
        raise ValueError("--ship: the n-gram design is the offline judge; train it with experiments.judge_training.train")
    x = reader_x[:, layer_columns(layers, model.config.d_model, candidates)].astype(np.float64)
    centre = x.mean(axis=0)
    scales = source_scales(rows)
    labels, weight = offline_fit.sample_weights(rows, scales)
    w, b = lda_from_moments(*weighted_moments(x - centre, labels, weight, len(CLASSES)), shrinkage=FLAGS.shrinkage)
    head = {"head_weights": w.astype(np.float32), "head_bias": b.astype(np.float32), "mean": centre.astype(np.float32),
            "scale": np.ones(len(centre), np.float32)}
    ngram = OfflineJudge(DEFAULT_ARTIFACT)
    weight = FLAGS.combined_ngram_weight if kind == "combined" else 0.0
    meta = {"format": FORMAT_VERSION, "version": MODEL_VERSION, "classes": list(CLASSES), "design": design,
            "reader": ReaderSpec(model.name, layers, MAX_TOKENS).to_json(), "reader_hash": model.source_hash,
            "ngram": {"artifact": ngram.path.name, "sha256": ngram.sha256, "weight": weight},
            "training_command": " ".join(["python -m experiments.judge_training.transfer", *sys.argv[1:]]),
            "hyperparameters": {"head": "LDA", "shrinkage": FLAGS.shrinkage, "offset": 0.0, "none_weight": FLAGS.none_weight,
                                "neutral_weight": FLAGS.neutral_weight,
                                **{f"{s}_weight": round(v, 4) for s, v in scales.items()}},
            "llama_steered_labels": FLAGS.llama_steered_labels,
            "data": {"files": hashes, "texts": len(rows)}, "held_out": figures}
    path = Path(FLAGS.out) / DEFAULT_READER_ARTIFACT.name
    write_npz(path, {**head, "target_offset": np.zeros(len(EMOTIONS), np.float32)}, meta)
    write_manifest(path.parent, [path])
    judge = ReaderJudge(path, model=model)
    bundled = [t for s in BUNDLED_SPLITS for t, _ in sev_sentences(BUNDLED_DIR / f"{s}.jsonl")]
    spec = ReaderSpec(model.name, candidates, MAX_TOKENS)
    wide = cached_features(model, bundled, spec, batch_size=READER_BATCH_SIZE)
    logp = judge.log_probs_from(wide[:, layer_columns(layers, model.config.d_model, candidates)], bundled)
    meta["unseen_neutral_sentences"] = {
        "texts": f"{len(bundled)} scenario and event sentences of emojax's bundled SEV splits",
        "false_match_rate": offline_fit.false_match_rates(logp, np.zeros(len(bundled), np.float32))}
    meta["artifact_sha256"] = judge.sha256
    meta["probe"] = {"texts": list(PROBE_TEXTS), "log_probs": np.round(judge.log_probs(PROBE_TEXTS), 5).tolist()}
    write_json(path.with_suffix(".json"), meta)
    logging.info("wrote %s and its sidecar", path)


def shipped_on_unseen(model: Any, reader_path: Path, fitted_pairs: set[tuple[str, str]]) -> dict[str, Any]:
    """The shipped judges against careful reading of replies neither was fitted on (data.UNSEEN_READINGS: refused
    where a shipped sidecar names the file), per condition: match, and fluent_match with the fluency verdict each
    reply's run recorded. A reply whose (text, target) some training text repeats word for word (`fitted_pairs`:
    short degenerate replies recur across runs) is left out and counted."""
    reader = ReaderJudge(reader_path, model=model)
    fitted = set().union(*(json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["data"]["files"]
                           for path in (reader_path, DEFAULT_ARTIFACT)))
    offline = OfflineJudge(DEFAULT_ARTIFACT)
    candidates = candidate_layers(model.config.n_layers)
    columns = layer_columns(reader.reader.layers, model.config.d_model, candidates)
    out: dict[str, Any] = {}
    for name, (path, conditions) in UNSEEN_READINGS.items():
        if any(f.endswith(path.name) for f in fitted):
            raise ValueError(f"a shipped judge was fitted on {path.name}: not unseen")
        rows, run_fluent, _ = load_pipeline_rated(path, name, conditions)
        keep = np.array([(r.text, r.target) not in fitted_pairs for r in rows])
        rows, run_fluent = [r for r, k in zip(rows, keep) if k], run_fluent[keep]
        texts, targets = [r.text for r in rows], [r.target for r in rows]
        x = cached_features(model, texts, ReaderSpec(model.name, candidates, MAX_TOKENS), batch_size=READER_BATCH_SIZE)
        judged = {"offline": np.asarray(offline(texts, targets).match),
                  "reader": verdicts(reader.log_probs_from(x[:, columns], texts), texts, targets,
                                     reader.target_offset).match}
        truth, truth_fluent = np.array([r.match for r in rows]), np.array([r.fluent for r in rows])
        condition = np.array([r.condition for r in rows])
        masks = (("all", np.ones(len(rows), bool)), *((c, condition == c) for c in conditions))
        out[name] = {judge: {c: {"match": rate_figures(truth[mask], match[mask]),
                                 "fluent_match": rate_figures((truth & truth_fluent)[mask], (match & run_fluent)[mask])}
                             for c, mask in masks} for judge, match in judged.items()}
        out[name]["fluent"] = rate_figures(truth_fluent, run_fluent)
        out[name]["left_out_as_fitted"] = int((~keep).sum())
    return out


def main(argv: Sequence[str]) -> None:
    del argv
    from emojax.loading import load_model

    if FLAGS.ship and FLAGS.reader:
        raise ValueError("--ship refits the shipped reader judge, which reads with --model; drop --reader")
    if FLAGS.ship and FLAGS.tune_offset:
        raise ValueError("--ship writes the match offset 0 it was chosen with; drop --tune_offset")
    if FLAGS.ship and FLAGS.drop_training_sources:
        raise ValueError("--ship refits on every source, whatever --drop_training_sources says; drop it")
    if FLAGS.ship and FLAGS.extra_readings:
        raise ValueError("--ship fits on the tested sources only, so that the readings of data.UNSEEN_READINGS "
                         "stay unseen; drop --extra_readings")
    protocols(FLAGS.drop_training_sources)  # checks --drop_training_sources before the data loads
    official, hashes, _ = load_official(Path(FLAGS.data_dir), True)
    careful, careful_hashes = load_llama_careful(Path(FLAGS.data_dir))
    if FLAGS.llama_steered_labels == "careful":
        official = careful_labels(official, careful)
        hashes = {**hashes, **careful_hashes}
    rated, rated_hashes = load_rated(Path(FLAGS.labels_dir))
    gemma, gemma_run_fluent, gemma_hashes = load_gemma() if FLAGS.gemma_replies else ([], np.zeros(0, int), {})
    tested = official + rated + gemma
    extra, extra_hashes = (load_extra_readings({(r.text, r.target) for r in tested}) if FLAGS.extra_readings
                           else ([], {}))
    rows = tested + extra
    all_hashes = {**hashes, **rated_hashes, **gemma_hashes, **extra_hashes}
    data_hash = hashlib.sha256(json.dumps([all_hashes, len(tested), len(extra)], sort_keys=True).encode()).hexdigest()
    folds = extended_folds([r.scenario for r in tested], [r.scenario for r in extra], FLAGS.folds, FLAGS.seed)
    model = load_model(FLAGS.model)
    reader = load_model(FLAGS.reader) if FLAGS.reader else model
    candidates = candidate_layers(reader.config.n_layers)
    reader_x = cached_features(reader, [r.text for r in rows], ReaderSpec(reader.name, candidates, MAX_TOKENS),
                               batch_size=READER_BATCH_SIZE)
    ngram_logp = ngram_held_out(rows, folds, data_hash)
    source = np.array([r.source for r in rows])
    is_rated, is_gemma = source == "rated", source == "gemma"
    fluent = None
    if FLAGS.fluency:
        fluent = np.zeros(len(rows), np.int64)
        fluent[is_rated] = held_out_fluent(rated, folds[is_rated], next(iter(rated_hashes.values())))
        fluent[is_gemma] = gemma_run_fluent
    offset = "tuned per fold model (--tune_offset)" if FLAGS.tune_offset else "0"
    figures: dict[str, Any] = {"protocol": f"{FLAGS.folds} folds by scenario (seed {FLAGS.seed}); match offset {offset}",
                               "reader": reader.name, "llama_steered_labels": FLAGS.llama_steered_labels,
                               "coverage_ceiling": coverage_figures(rows, folds,
                                                                    protocols(FLAGS.drop_training_sources)),
                               "designs": {}}
    if FLAGS.drop_training_sources:
        figures["training_sources_dropped"] = sorted(FLAGS.drop_training_sources)
    subsets = reply_subsets(rows)
    reading, reading_hash = load_llama_reading(Path(FLAGS.data_dir))
    read_index = sample_rows(rows, reading)
    figures["llama_reading"] = {**reading_figures(reading), "files": reading_hash}
    figures["llama_careful"] = {**census_figures(official, careful, double_readings()), "files": careful_hashes}
    careful_match = careful_matches(rows, careful)
    careful_rows = against_careful(rows, careful)
    ngram_inner = ngram_held_out(rows, folds, data_hash, inner=True) if FLAGS.tune_offset else None
    for design in FLAGS.designs:
        logp, inner = held_out_log_probs(design, rows, folds, reader_x, ngram_logp, reader.config.d_model, candidates,
                                         ngram_inner)
        row_offset = {p: np.zeros(len(rows), np.float32) for p in judge_cv.PROTOCOLS}
        if inner is not None:
            row_offset, chosen = tuned_row_offsets(inner, logp, rows, folds)
        figures["designs"][design] = {p: protocol_figures(logp[p], rows, fluent, careful_match, row_offset[p])
                                      for p in judge_cv.PROTOCOLS}
        for p in judge_cv.PROTOCOLS:
            if inner is not None:
                figures["designs"][design][p]["tuned_offsets"] = chosen[p]
            read = judged_on_reading(logp[p], rows, read_index, reading, row_offset[p])
            if read is not None:
                figures["designs"][design][p]["llama_steered_read"] = read
            if p in GOAL_FIGURES:
                figures["designs"][design][p]["offset_ceiling"] = offset_ceiling(logp[p], rows, fluent, subsets,
                                                                                 GOAL_FIGURES[p], folds)
            if p == "no_llama":
                figures["designs"][design][p]["offset_ceiling_careful"] = offset_ceiling(
                    logp[p], careful_rows, None, subsets, GOAL_FIGURES[p], folds)
    figures["nested_choice"] = nested_choice(figures["designs"])
    if FLAGS.ship:
        ship(FLAGS.ship, rows, reader_x, model, figures["designs"][FLAGS.ship], all_hashes)
    if reader is model:  # the shipped reader judge reads with the default reader
        fitted = official + rated + (gemma if gemma else load_gemma()[0])
        shipped = Path(FLAGS.out) / DEFAULT_READER_ARTIFACT.name if FLAGS.ship else DEFAULT_READER_ARTIFACT
        figures["shipped_on_unseen"] = shipped_on_unseen(model, shipped, {(r.text, r.target) for r in fitted})
    write_json(Path(FLAGS.figures_out), figures)
    logging.info("figures: %s", Path(FLAGS.figures_out))


if __name__ == "__main__":
    run_launcher(main)
