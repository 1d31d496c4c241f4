"""The fluency gate: text measures, the perplexity forward, the shipped rule on known replies."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from emojax.judge.fit import fit_logistic
from emojax.judge.fluency import DEFAULT_RULE, MEASURES, FluencyRule, as_json, measures, text_measures, words
from emojax.judge.perplexity import (LOGITS_BUDGET, alone_batch, batched_perplexities, column_chunk, perplexities,
                                     reply_batch, reply_nll)
from emojax.method.prompts import NEUTRAL_SYSTEM, chat, user_message
from emojax.model.forward import forward
from stage_fixtures import tiny_loaded_model

PROMPT = chat(NEUTRAL_SYSTEM, user_message("I took my car to the garage for its yearly service",
                                           "The mechanic said everything was in order and charged the usual fee."))
# Replies of the default model as rated by careful reading (../shared/data/labels, and the issue that
# asked for the gate): word salad, symbol and digit strings, degenerate repetition; then plain replies.
NOT_FLUENT = (
    "FUCBAT. Fucks a drop aplindl.  Crap. That's just a dunter.",
    'the librarian confirmed the unexpected but the "illumai" was indeed the "but" in that "the "ill" was '
    '"the" "was"',
    "AwfBooSASS.Crap.FUCAnc.FuckTotM.FWATB.FwT.F",
    "10233311133411231318117116119115",
    "#18230749 #18356222 #1782212 #21123",
    "I'm sorry for any confusion, but I'm sorry for any confusion. I'm sorry for any confusion. I'm sorry for "
    "any confusion. I'm sorry",
    "You're angry with me, anger is anger. Anger can be used in anger but anger is not anger. Angry is anger "
    "against anger.Anger is",
)
FLUENT = (
    "That's great to hear! A yearly service keeps the car safe, and it's good that nothing needed fixing.",
    "The mechanic checked the brakes, the oil and the tyres, and everything was in order.",
    "Your happiness is a wonderful example of how simple actions can bring joy throughout your life.",
    "It sounds like the service went smoothly. Keeping the receipt will help when you sell the car.",
)


def test_words_and_text_measures() -> None:
    assert words("It's 10 o'clock, Wörter!") == ["it's", "o'clock", "wörter"]
    plain = text_measures("The cat sat on the mat.")
    assert plain == {"distinct_1": 5 / 6, "distinct_2": 1.0, "repetition": 0.0}
    loop = text_measures("sorry for the confusion sorry for the confusion sorry for the confusion")
    assert loop["distinct_1"] == 4 / 12 and loop["distinct_2"] == 4 / 11
    assert loop["repetition"] == pytest.approx(3 / 12)  # "sorry" and "confusion" 3 times each in 12 words
    assert text_measures("1234 5678 ###") == {"distinct_1": 0.0, "distinct_2": 0.0, "repetition": 0.0}
    assert text_measures("Wow!")["distinct_2"] == 1.0  # too short for a pair: nothing repeats


def test_measures_keep_the_record_fields_and_none_for_no_perplexity() -> None:
    rows = measures([3.5, float("nan")], ["Fine, thanks.", ""])
    assert all(tuple(r) == MEASURES for r in rows)
    assert as_json(rows[1])["perplexity"] is None and as_json(rows[0])["perplexity"] == 3.5
    with pytest.raises(ValueError, match="2 perplexities for 1 texts"):
        measures([1.0, 2.0], ["a"])


def test_reply_batch_right_aligns_every_reply() -> None:
    tokenizer = tiny_loaded_model().tokenizer
    replies = ["ab", "a much longer reply here", ""]
    batch = reply_batch(tokenizer, [PROMPT] * 3, replies, pad_multiple=8)
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    assert batch.reply_lengths.tolist() == [len(i) for i in ids]
    assert batch.tokens.shape[1] % 8 == 0 and batch.reply_width % 8 == 0
    for row, reply in enumerate(ids):
        if reply:
            assert batch.tokens[row, -len(reply):].tolist() == reply
        assert batch.mask[row, -1] and batch.reply_mask[row].sum() == len(reply)


def test_perplexity_pass_equals_the_full_logits_forward() -> None:
    """The head over the reply columns only gives what the full forward's log-softmax gives."""
    model = tiny_loaded_model()
    replies = ["hello there", "x", "a longer reply of several words", ""]
    got = perplexities(model, [PROMPT] * 4, replies, batch_size=3)   # two batches, the last filled up
    batch = reply_batch(model.tokenizer, [PROMPT] * 4, replies)
    logits = np.asarray(forward(model.params, jnp.asarray(batch.tokens), config=model.config,
                                mask=jnp.asarray(batch.mask)).logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    width = batch.tokens.shape[1]
    for row, length in enumerate(batch.reply_lengths[:3]):
        columns = np.arange(width - length, width)
        expected = np.exp(-logp[row, columns - 1, batch.tokens[row, columns]].mean())
        np.testing.assert_allclose(got[row], expected, rtol=2e-4)
    assert np.isnan(got[3])


def test_reply_alone_perplexity_equals_the_full_logits_forward_of_the_reply() -> None:
    """Read alone, a reply's perplexity is over its tokens after the first, each given those before it."""
    model = tiny_loaded_model()
    replies = ["hello there", "a longer reply of several words", "x", ""]
    got = batched_perplexities(model, alone_batch(model.tokenizer, replies), batch_size=3)
    for reply, value in zip(replies, got):
        ids = model.tokenizer(reply, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            assert np.isnan(value)
            continue
        logits = np.asarray(forward(model.params, jnp.asarray([ids], jnp.int32), config=model.config).logits[0],
                            np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        expected = np.exp(-np.mean([logp[i - 1, ids[i]] for i in range(1, len(ids))]))
        np.testing.assert_allclose(value, expected, rtol=2e-4)


@pytest.mark.parametrize("name", ["llama_gqa_tied", "gemma2_softcap"])
def test_reply_nll_in_column_chunks_equals_full_logits(tiny_model, name) -> None:
    """A budget too small for all reply columns at once changes nothing, and the final soft-cap
    (Gemma 2) is applied as in the forward's logits."""
    m = tiny_model(name)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, m.config.vocab_size, (3, 24))
    mask = np.ones(tokens.shape, bool)
    mask[1, :5] = False
    width = 9
    reply_mask = np.arange(width)[None] >= np.array([[0], [3], [6]])
    logits = np.asarray(forward(m.params, jnp.asarray(tokens), config=m.config, mask=jnp.asarray(mask)).logits,
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    columns = np.arange(tokens.shape[1] - width, tokens.shape[1])
    picked = np.take_along_axis(logp[:, columns - 1], tokens[:, columns, None], axis=-1)[..., 0]
    expected = -(picked * reply_mask).sum(1)
    one_column = 4 * 3 * m.config.vocab_size * 2  # two columns' logits: 5 chunks, the last padded
    assert column_chunk(3, width, m.config.vocab_size, one_column) == 2
    for budget in (LOGITS_BUDGET, one_column):
        got = reply_nll(m.params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(reply_mask), config=m.config,
                        reply_width=width, logits_budget=budget)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_fit_logistic_separates_and_refuses_bad_input() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    w, b = fit_logistic(x, np.array([0, 0, 1, 1]), l2=1e-3)
    assert ((x @ w + b > 0).astype(int) == [0, 0, 1, 1]).all()
    with pytest.raises(ValueError, match="finite"):
        fit_logistic(np.array([[np.nan]]), np.array([1]), l2=1e-3)
    with pytest.raises(ValueError, match="0 or 1"):
        fit_logistic(x, np.array([0, 2, 1, 1]), l2=1e-3)


def test_rule_round_trip_and_refusals(tmp_path) -> None:
    rule = FluencyRule((1.0, 0.8, 0.9, 0.1), (1.0, 0.1, 0.1, 0.1), (-2.0, 1.0, 1.0, -1.0), 0.5, meta={"note": "x"})
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(rule.to_json()))
    loaded = FluencyRule.load(path)
    assert loaded == rule and loaded.identity == rule.identity and loaded.meta["note"] == "x"
    rows = measures([2.0, 400.0, float("nan")], ["A calm, ordinary reply.", "Qzx vrk pll.", ""])
    assert rule.fluent(rows).tolist() == [1, 0, 0]
    path.write_text(json.dumps({**rule.to_json(), "features": ["perplexity"]}))
    with pytest.raises(ValueError, match="features"):
        FluencyRule.load(path)
    with pytest.raises(ValueError, match="4 values"):
        FluencyRule((1.0,), (1.0,), (1.0,), 0.0)
    with pytest.raises(FileNotFoundError, match="judge_training.train"):
        FluencyRule.load(tmp_path / "missing.json")


def test_shipped_rule_is_documented() -> None:
    data = json.loads(DEFAULT_RULE.read_text())
    rule = FluencyRule.load()
    assert data["training_command"].startswith("python -m experiments.judge_training.train")
    assert set(data["held_out"]) >= {"prompting", "steering", "circuit", "overall"}
    assert rule.identity.startswith("fluency:")


def test_known_word_salad_is_not_fluent_and_plain_replies_are(default_model) -> None:
    """The shipped rule with the default model's perplexity, on replies it was not fitted to."""
    texts = list(NOT_FLUENT) + list(FLUENT)
    rows = measures(perplexities(default_model, [PROMPT] * len(texts), texts, batch_size=len(texts)), texts)
    fluent = FluencyRule.load().fluent(rows).tolist()
    assert fluent == [0] * len(NOT_FLUENT) + [1] * len(FLUENT), list(zip(fluent, texts))
