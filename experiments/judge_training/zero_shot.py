"""How much a reader model knows of the six emotions without labels: zero-shot top-1 on reference matches.

    python -m experiments.judge_training.zero_shot [--readers=smollm2-135m-instruct,gemma-3-270m] [--per_source=240]

A head fitted on labels never predicts an emotion its labels lack (transfer.py's coverage ceiling), so only
knowledge of that emotion from elsewhere could fill the gap. This measures two such readings, each on a seeded
sample of every source's replies that its reference judged a match, as six-way top-1 accuracy against the
target (chance 1/6):

  cloze  the reader continues '"<reply>"\\n\\nThe emotion in this text is' (the reply's first 64 tokens, the
         tokenizer's own special tokens) and the six words of CLOZE_WORDS are compared by log-probability,
         as they come (`raw`) and less each word's mean log-probability over the SEV sentences (`calibrated`:
         a word the reader says after any text stops winning by its base rate alone);
  lens   the embedded SmolLM2 only, from transfer.py's cached pooled states: its final norm and LM head applied
         to the mean layer-29 state; each emotion scores the log-sum-exp of the logits of its single-token
         LENS_WORDS, less that score's mean over the SEV sentences (each emotion word's base rate).

With --threshold_reader, the calibrated cloze of that reader over every text also becomes a judge, cross-validated
like transfer.py's designs (same folds and protocols): a reply matches when its target is the reading's top emotion
and its calibrated score exceeds one threshold, chosen on the protocol's training sources (the mean of their
kappas) with the base rates of the training folds' SEV sentences.

The figures go to --zero_shot_out (zero_shot_figures.json beside this file).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from emojax.data.sev import EMOTIONS
from emojax.judge.reader import ReaderSpec, bucket_width, left_padded
from emojax.launch.launcher import run_launcher
from emojax.model import block
from emojax.model.forward import forward
from emojax.runs.atomic import write_json
from experiments.judge_training import cross_validation as judge_cv
from experiments.judge_training import offline_fit
from experiments.judge_training.data import LabelledText, load_gemma, load_official, load_rated
from experiments.judge_training.reader_cache import CANDIDATE_LAYERS, MAX_TOKENS, cached_features

FLAGS = flags.FLAGS
offline_fit.define_data_flags()
TEMPLATE = '"{reply}"\n\nThe emotion in this text is'
CLOZE_WORDS = {"anger": " anger", "sadness": " sadness", "happiness": " joy", "fear": " fear",
               "surprise": " surprise", "disgust": " disgust"}
LENS_WORDS = {"anger": "angry anger furious mad rage annoyed frustrated outraged",
              "sadness": "sad sadness sorrow grief heartbroken depressed unhappy miserable",
              "happiness": "happy happiness joy delighted glad cheerful excited thrilled",
              "fear": "afraid fear scared terrified anxious worried frightened nervous",
              "surprise": "surprised surprise shocked astonished amazed unexpected stunned wow",
              "disgust": "disgusted disgust gross revolting disgusting repulsed nauseous sickening"}
LENS_LAYER = 29
SOURCES = ("prompted", "unprompted", "rated", "gemma")

flags.DEFINE_list("readers", ["smollm2-135m-instruct", "gemma-3-270m"], "Reader models of the cloze reading.")
flags.DEFINE_integer("per_source", 240, "Reference matches sampled per source (all of them where fewer).")
flags.DEFINE_bool("lens", True, "Add the logit-lens reading of SmolLM2's cached pooled states.")
flags.DEFINE_string("threshold_reader", "gemma-3-270m", "Reader of the cross-validated threshold judge ('' for none).")
flags.DEFINE_string("zero_shot_out", str(Path(__file__).resolve().parent / "zero_shot_figures.json"),
                    "Where the figures go.")


def single_token(tokenizer: Any, word: str) -> int | None:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


@functools.partial(jax.jit, static_argnames=("config",))
def _last_log_probs(params: dict[str, Any], tokens: jax.Array, mask: jax.Array, word_ids: jax.Array, *,
                    config: Any) -> jax.Array:
    logits = forward(params, tokens, config=config, mask=mask, logits="last").logits[:, -1]
    return jax.nn.log_softmax(logits, axis=-1)[:, word_ids]


def cloze_scores(model: Any, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """[n, 6] log-probabilities of CLOZE_WORDS (EMOTIONS order) after TEMPLATE around each reply."""
    tok = model.tokenizer
    word_ids = [single_token(tok, CLOZE_WORDS[e]) for e in EMOTIONS]
    if None in word_ids:
        raise ValueError(f"zero_shot: {model.name} splits a cloze word into several tokens: {CLOZE_WORDS}")
    ids = [tok(TEMPLATE.format(reply=tok.decode(row[:MAX_TOKENS])))["input_ids"]
           for row in tok(list(texts), add_special_tokens=False)["input_ids"]]
    out = np.zeros((len(texts), len(EMOTIONS)), np.float32)
    order = np.argsort([len(row) for row in ids], kind="stable")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        members = order[start:start + batch_size]
        tokens, mask = left_padded([ids[i] for i in members], bucket_width(max(len(ids[i]) for i in members)), pad_id)
        out[members] = np.asarray(_last_log_probs(model.params, jnp.asarray(tokens), jnp.asarray(mask),
                                                  jnp.asarray(word_ids), config=model.config))
    return out


def lens_words_kept(model: Any) -> dict[str, list[str]]:
    """The LENS_WORDS the lens reads: those one token long (with a leading space) in the model's vocabulary."""
    return {e: [w for w in LENS_WORDS[e].split() if single_token(model.tokenizer, " " + w) is not None] for e in EMOTIONS}


def lens_scores(model: Any, rows: Sequence[LabelledText], chosen: np.ndarray) -> np.ndarray:
    """[len(chosen), 6] logit-lens emotion scores of the chosen rows, less the SEV sentences' mean score."""
    spec = ReaderSpec(model.name, CANDIDATE_LAYERS, MAX_TOKENS)
    states = cached_features(model, [r.text for r in rows], spec, batch_size=32)
    column = CANDIDATE_LAYERS.index(LENS_LAYER) * model.config.d_model
    pooled = states[:, column:column + model.config.d_model]
    head = np.asarray(block.lm_head(model.params), np.float32)
    kept = lens_words_kept(model)
    word_ids = [[single_token(model.tokenizer, " " + w) for w in kept[e]] for e in EMOTIONS]
    if not all(word_ids):
        raise ValueError(f"zero_shot: {model.name} has no single-token lens word for "
                         f"{[e for e, ids in zip(EMOTIONS, word_ids) if not ids]}")

    def scores(members: np.ndarray) -> np.ndarray:
        logits = np.asarray(block.final_norm(jnp.asarray(pooled[members]), model.params, model.config), np.float32) @ head
        return np.stack([np.logaddexp.reduce(logits[:, ids], axis=1) for ids in word_ids], axis=1)

    neutral = np.flatnonzero([r.source == "neutral" for r in rows])
    return scores(chosen) - scores(neutral).mean(axis=0)


def top1_figures(scores: np.ndarray, targets: Sequence[str], sources: Sequence[str]) -> dict[str, Any]:
    """Six-way top-1 accuracy against the target, per source and per target emotion."""
    hit = scores.argmax(axis=1) == np.array([EMOTIONS.index(t) for t in targets])
    sources, targets = np.array(sources), np.array(targets)
    out = {}
    for source in SOURCES:
        mask = sources == source
        out[source] = {"n": int(mask.sum()), "top1": round(float(hit[mask].mean()), 4),
                       "per_emotion": {e: round(float(hit[mask & (targets == e)].mean()), 4)
                                       for e in EMOTIONS if (mask & (targets == e)).any()}}
    return out


THRESHOLDS = tuple(float(t) for t in np.arange(-2.0, 8.001, 0.25))


def threshold_matches(calibrated: np.ndarray, targets: np.ndarray, threshold: float) -> np.ndarray:
    """1 where the target (index; -1 for none) is the top emotion and its calibrated score exceeds `threshold`."""
    target = np.maximum(targets, 0)
    own = calibrated[np.arange(len(calibrated)), target]
    other = np.where(np.eye(len(EMOTIONS), dtype=bool)[target], -np.inf, calibrated).max(axis=1)
    return ((own > other) & (own > threshold) & (targets >= 0)).astype(np.int64)


def threshold_judge_figures(scores: np.ndarray, rows: Sequence[LabelledText], folds: np.ndarray) -> dict[str, Any]:
    """The threshold judge of the module docstring, per protocol: held-out figures per source, SEV false matches."""
    source = np.array([r.source for r in rows])
    truth = np.array([r.match for r in rows])
    targets = np.array([EMOTIONS.index(r.target) if r.target else -1 for r in rows])
    neutral = source == "neutral"
    out = {}
    for protocol, (train_sources, test_sources) in judge_cv.PROTOCOLS.items():
        judged, thresholds = np.zeros(len(rows), np.int64), []
        false_hits, neutral_seen = np.zeros(len(EMOTIONS)), 0
        for k in range(FLAGS.folds):
            calibrated = scores - scores[neutral & (folds != k)].mean(axis=0)
            fitted = [m for m in ((folds != k) & (source == s) for s in sorted(train_sources - {"neutral"})) if m.any()]
            threshold = max(THRESHOLDS, key=lambda t: np.mean(
                [judge_cv.cohen_kappa(truth[m], threshold_matches(calibrated[m], targets[m], t)) for m in fitted]))
            thresholds.append(threshold)
            test = (folds == k) & np.isin(source, list(test_sources))
            judged[test] = threshold_matches(calibrated[test], targets[test], threshold)
            held = neutral & (folds == k)
            neutral_seen += int(held.sum())
            false_hits += [threshold_matches(calibrated[held], np.full(int(held.sum()), e), threshold).sum()
                           for e in range(len(EMOTIONS))]
        tested = np.isin(source, list(test_sources - {"neutral"}))
        out[protocol] = {"thresholds": thresholds,
                         **{s: judge_cv.binary_figures(truth[tested & (source == s)], judged[tested & (source == s)])
                            for s in SOURCES if (tested & (source == s)).any()},
                         "neutral_false_match": dict(zip(EMOTIONS, np.round(false_hits / neutral_seen, 4).tolist()))}
    return out


def sample_matches(rows: Sequence[LabelledText], per_source: int, seed: int) -> np.ndarray:
    """Indices of up to `per_source` reference matches of every source, seeded."""
    rng = np.random.default_rng(seed)
    chosen = []
    for source in SOURCES:
        members = np.flatnonzero([r.source == source and r.match == 1 for r in rows])
        chosen.append(np.sort(rng.choice(members, min(per_source, len(members)), replace=False)))
    return np.concatenate(chosen)


def main(argv: Sequence[str]) -> None:
    del argv
    from emojax.loading import load_model

    official, _, _ = load_official(Path(FLAGS.data_dir), True)
    rated, _ = load_rated(Path(FLAGS.labels_dir))
    gemma, _, _ = load_gemma()
    rows = official + rated + gemma
    chosen = sample_matches(rows, FLAGS.per_source, FLAGS.seed)
    targets, sources = [rows[i].target for i in chosen], [rows[i].source for i in chosen]
    figures: dict[str, Any] = {"sample": f"up to {FLAGS.per_source} reference matches per source, seed {FLAGS.seed}",
                               "chance": round(1 / len(EMOTIONS), 4), "template": TEMPLATE, "cloze_words": CLOZE_WORDS,
                               "cloze": {}}
    neutral = [r.text for r in rows if r.source == "neutral"]
    for name in FLAGS.readers:
        model = load_model(name)
        scores = cloze_scores(model, [rows[i].text for i in chosen])
        base_rate = cloze_scores(model, neutral).mean(axis=0)
        figures["cloze"][name] = {"raw": top1_figures(scores, targets, sources),
                                  "calibrated": top1_figures(scores - base_rate, targets, sources)}
        logging.info("cloze %s: %s", name, {k: {s: f["top1"] for s, f in v.items()} for k, v in figures["cloze"][name].items()})
    if FLAGS.threshold_reader:
        model = load_model(FLAGS.threshold_reader)
        folds = judge_cv.scenario_folds([r.scenario for r in rows], FLAGS.folds, FLAGS.seed)
        figures["threshold_judge"] = {"reader": FLAGS.threshold_reader,
                                      **threshold_judge_figures(cloze_scores(model, [r.text for r in rows]), rows, folds)}
    if FLAGS.lens:
        model = load_model("smollm2-135m-instruct")
        figures["lens"] = {"layer": LENS_LAYER, "words": lens_words_kept(model),
                           **top1_figures(lens_scores(model, rows, chosen), targets, sources)}
        logging.info("lens: %s", {s: figures["lens"][s]["top1"] for s in SOURCES})
    write_json(Path(FLAGS.zero_shot_out), figures)


if __name__ == "__main__":
    run_launcher(main)
