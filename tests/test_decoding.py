"""Logits processors against Hugging Face's own LogitsProcessor classes on random logits and sequences."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                                                    NoRepeatNGramLogitsProcessor,
                                                    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopPLogitsWarper)

from emojax.generation import logits_processing as decoding
from emojax.generation.logits_processing import DecodingSettings

VOCAB = 12  # small, so random sequences repeat tokens and n-grams often
PAD = -1


def _sequences(seed: int, lengths: list[int], vocab: int = VOCAB) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n) for n in lengths]


def _static_buffer(rows: list[np.ndarray], slack: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Left-padded rows followed by `slack` unwritten slots (PAD), as the decode loop holds them.
    Padding slots get real token ids, so a processor that forgot the mask would see them."""
    length = max(len(r) for r in rows)
    buffer = np.full((len(rows), length + slack), PAD, np.int64)
    valid = np.zeros(buffer.shape, bool)
    for i, r in enumerate(rows):
        buffer[i, :length - len(r)] = 7
        buffer[i, length - len(r):length] = r
        valid[i, length - len(r):length + slack] = True
    return buffer, valid, length


def _logits(seed: int, rows: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (rows, VOCAB)).astype(np.float32)


def _hf(processor, row: np.ndarray, logits: np.ndarray) -> np.ndarray:
    ids = torch.from_numpy(np.asarray(row, np.int64))[None]
    return processor(ids, torch.from_numpy(logits[None].copy()))[0].numpy()


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_hf_and_ignores_padding(penalty: float) -> None:
    rows = _sequences(0, [9, 4, 1, 6])
    buffer, valid, length = _static_buffer(rows, slack=5)
    logits = _logits(1, len(rows))
    seen = decoding.seen_tokens(jnp.asarray(buffer), jnp.asarray(valid), VOCAB)
    ours = np.asarray(decoding.apply_repetition_penalty(jnp.asarray(logits), seen, penalty))
    hf = RepetitionPenaltyLogitsProcessor(penalty)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(ours[i], _hf(hf, row, logits[i]))
    # Token 7 fills the padding; where no row holds it, it is not penalised.
    for i, row in enumerate(rows):
        if 7 not in row:
            assert ours[i, 7] == logits[i, 7]


def test_seen_set_grows_one_token_per_step() -> None:
    rows = _sequences(2, [5, 3])
    buffer, valid, length = _static_buffer(rows, slack=4)
    seen = decoding.seen_tokens(jnp.asarray(buffer), jnp.asarray(valid), VOCAB)
    fresh = next(t for t in range(VOCAB) if t not in rows[0])
    new = np.array([fresh, PAD])  # the second row has finished: nothing is added
    grown = decoding.mark_seen(seen, jnp.asarray(new))
    buffer[:, length] = new
    np.testing.assert_array_equal(grown, decoding.seen_tokens(jnp.asarray(buffer), jnp.asarray(valid), VOCAB))
    assert bool(grown[0, fresh]) and not bool(seen[0, fresh])


@pytest.mark.parametrize("ngram_size", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_hf_over_the_whole_row(ngram_size: int) -> None:
    rows = _sequences(3 + ngram_size, [30, 9, 3, 2, 1], vocab=3)
    rows.append(np.array([0, 1, 2, 0, 1, 2, 1, 1, 0, 1, 2]))  # its suffix recurs for every n
    buffer, valid, length = _static_buffer(rows, slack=6)
    logits = _logits(4, len(rows))
    ours = np.asarray(decoding.apply_no_repeat_ngram(jnp.asarray(logits), jnp.asarray(buffer), jnp.asarray(valid),
                                                     jnp.asarray(length), ngram_size))
    hf = NoRepeatNGramLogitsProcessor(ngram_size)
    banned_somewhere = False
    for i, row in enumerate(rows):
        expected = _hf(hf, row, logits[i])
        np.testing.assert_array_equal(ours[i], expected)
        banned_somewhere |= bool(np.isinf(expected).any())
    assert banned_somewhere


def test_no_repeat_ngram_ignores_windows_past_the_filled_length() -> None:
    row = np.array([1, 2, 3, 1, 2])
    buffer, valid, length = _static_buffer([row], slack=3)
    buffer[0, length:] = [2, 5, 9]  # stale slots beyond `length` must not ban anything
    banned = decoding.banned_ngram_tokens(jnp.asarray(buffer), jnp.asarray(valid), jnp.asarray(length), 2, VOCAB)
    assert set(np.flatnonzero(np.asarray(banned[0]))) == {3}


def test_min_new_tokens_matches_hf_for_several_eos_ids() -> None:
    logits = _logits(5, 1)[0]
    prompt = _sequences(6, [5])[0]
    eos = [3, 8]
    hf = MinNewTokensLengthLogitsProcessor(len(prompt), 4, eos)
    for generated in range(7):
        row = np.concatenate([prompt, np.full(generated, 1)])
        ours = decoding.apply_min_new_tokens(jnp.asarray(logits[None]), jnp.asarray(generated), 4, eos)
        np.testing.assert_array_equal(np.asarray(ours[0]), _hf(hf, row, logits))
    assert np.isinf(np.asarray(decoding.apply_min_new_tokens(jnp.asarray(logits[None]), 0, 4, eos))[0, eos]).all()


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_matches_hf(top_p: float) -> None:
    logits = np.random.default_rng(7).normal(0, 3, (5, 200)).astype(np.float32)
    ours = np.asarray(decoding.apply_top_p(jnp.asarray(logits), top_p))
    expected = TopPLogitsWarper(top_p)(None, torch.from_numpy(logits.copy())).numpy()
    np.testing.assert_array_equal(ours, expected)


def test_process_logits_applies_hf_processors_in_hf_order() -> None:
    rows = _sequences(8, [10, 6, 8])
    buffer, valid, length = _static_buffer(rows, slack=4)
    logits = _logits(9, len(rows))
    settings = DecodingSettings(repetition_penalty=1.4, no_repeat_ngram_size=2, min_new_tokens=3,
                                temperature=0.7, top_p=0.8)
    seen = decoding.seen_tokens(jnp.asarray(buffer), jnp.asarray(valid), VOCAB)
    ours = np.asarray(decoding.process_logits(
        jnp.asarray(logits), settings=settings, buffer=jnp.asarray(buffer), valid=jnp.asarray(valid),
        length=jnp.asarray(length), seen=seen, n_generated=jnp.asarray(1), eos_token_ids=(4,)))
    for i, row in enumerate(rows):
        hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.4), NoRepeatNGramLogitsProcessor(2),
                                  MinNewTokensLengthLogitsProcessor(len(row) - 1, 3, [4]),
                                  TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.8)])
        np.testing.assert_array_equal(ours[i], _hf(hf, row, logits[i]))


def test_greedy_takes_the_first_maximum() -> None:
    logits = jnp.asarray([[0.0, 2.0, 2.0, -1.0], [5.0, -jnp.inf, 1.0, 5.0]])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    np.testing.assert_array_equal(decoding.choose_tokens(logits, DecodingSettings(), keys, 0), [1, 0])


def test_sampling_is_reproducible_and_stays_in_the_support() -> None:
    settings = DecodingSettings(temperature=1.0)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50)), jnp.float32)
    logits = logits.at[:, 10:].set(-jnp.inf)  # as after top-p or a banned n-gram
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    draws = np.stack([np.asarray(decoding.choose_tokens(logits, settings, keys, step)) for step in range(40)])
    assert (draws < 10).all()
    assert len(np.unique(draws)) > 3
    np.testing.assert_array_equal(draws[5], decoding.choose_tokens(logits, settings, keys, 5))


def test_sampling_follows_the_softmax() -> None:
    settings = DecodingSettings(temperature=1.0)
    logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.1]]))
    keys = jax.random.split(jax.random.PRNGKey(1), 1)
    draws = np.asarray(jax.vmap(lambda s: decoding.choose_tokens(logits, settings, keys, s))(jnp.arange(4000)))
    np.testing.assert_allclose(np.bincount(draws.ravel(), minlength=3) / draws.size, [0.6, 0.3, 0.1], atol=0.03)


@pytest.mark.parametrize("field, value", [("repetition_penalty", 0.0), ("no_repeat_ngram_size", -1),
                                          ("min_new_tokens", -2), ("temperature", -0.5), ("top_p", 0.0),
                                          ("top_p", 1.5)])
def test_settings_reject_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        DecodingSettings(**{field: value})
