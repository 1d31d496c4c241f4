"""Gemma-3-270M real weights: emojax's forward and generation against transformers loading the same GGUF.

- `load_model("gemma-3-270m")` joins, converts and caches the model, and a second load reads the cache;
- max |Δlogit| <= 2e-3 and the argmax identical at every position of a prompt longer than the
  512-token sliding window (so the local layers' window matters), alone and left-padded in a batch;
- greedy generation identical on 4 chat prompts in Gemma's turn format, stopping at <end_of_turn>.

Skipped, with the pip command as the reason, where the Gemma packages are absent.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
import torch

import gemma_fixtures as gemma
from emojax import generate
from emojax.loading import load_model
from emojax.model.forward import forward

TOL = 2e-3
REAL_NEW = 24
SYSTEM = "You are a helpful assistant. Answer in one or two sentences."
USERS = ["I lost my keys this morning.\nThen I found them in the fridge.",
         "Tell me about the sea.",
         "My dog ran away. We searched all night.",
         "What is two plus two?"]
CHATS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in USERS]

# A fixed English text; tokenised it is well over 512 tokens (the sliding window) for Gemma.
PARAGRAPHS = [
    "The lighthouse keeper had lived on the island for thirty-one years, and in all that time he had never once "
    "missed lighting the lamp at dusk. Storms came in from the west and battered the rocks; supply boats were "
    "late by weeks; his letters to the mainland went unanswered for whole seasons. Still, every evening he "
    "climbed the one hundred and twelve steps, trimmed the wick, polished the great lens with a soft cloth, and "
    "watched the beam sweep out across the dark water.",
    "One autumn a young woman arrived on the supply boat with a suitcase, a notebook and a letter from the "
    "harbour authority. The light, the letter said, was to be automated in the spring. She had come to survey "
    "the tower, to measure the gallery and the stairwell, and to decide where the new machinery would go. He "
    "read the letter twice, folded it carefully along its creases, and put the kettle on the stove without a "
    "word.",
    "Over the following weeks they fell into a routine. In the mornings she climbed the tower with her tape "
    "measure and her camera, and he mended nets on the jetty or repainted the window frames that the salt had "
    "blistered. In the afternoons they ate bread and smoked fish at the kitchen table while the wind rattled "
    "the glass. She asked him questions about the lamp, about the clockwork that once turned the lens, about "
    "the winter of the great storm when the sea had come right over the island and put out the fires in every "
    "house on the coast.",
    "He answered slowly at first, then with growing pleasure, drawing diagrams on the backs of envelopes and "
    "fetching logbooks from a cupboard that had not been opened in a decade. By the time the first snow fell "
    "she had filled three notebooks, and the survey she sent back to the harbour authority ran to ninety "
    "pages, most of which had nothing to do with machinery at all.",
    "In the spring the engineers came, as promised, and installed a small grey cabinet that hummed quietly at "
    "the foot of the stairs. The keeper stayed on. Nobody had told him to leave, and nobody, it seemed, had "
    "the heart to. Each evening, out of habit, he still climbed the steps at dusk, and each evening the lamp "
    "came on a moment before he reached the top, as if it had been waiting for him.",
    "Years later, when the island had become a stop for summer ferries and the keeper's cottage a small "
    "museum, visitors would read the ninety-page survey in a glass case by the door. Most of them skimmed the "
    "measurements. Almost all of them stopped at the last page, where, under the heading 'Recommendations', "
    "the surveyor had written a single line: that the light be kept exactly as it was, for as long as there "
    "was someone willing to climb the stairs.",
    "The ferries still pass the island twice a day in summer. Passengers crowd the rail to photograph the white "
    "tower against the sky, and a guide with a microphone tells them about the keeper, the surveyor and the "
    "storm. Nobody remembers any longer who first told the story, or how much of it is true; but on clear "
    "evenings, just before dusk, people on the mainland say they can still see a small figure on the gallery, "
    "looking out to sea, waiting for the light to come on.",
]
LONG_TEXT = "\n\n".join(PARAGRAPHS)
PAD_SHIFT = 37  # left padding of the shorter row


@pytest.fixture(scope="module")
def model():
    return gemma.loaded_gemma()


@pytest.fixture(scope="module")
def hf():
    gemma.require_gemma()
    return gemma.transformers_model()


def hf_logits(hf: Any, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(ids)[None], dtype=torch.long)).logits[0].numpy()


def assert_close_logits(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, what
    worst = float(np.abs(ours - theirs).max())
    assert worst <= TOL, f"{what}: max |dlogit| {worst:.2e} > {TOL}"
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1), err_msg=what)


@pytest.mark.slow
def test_loads_converts_and_caches(model):
    again = load_model(gemma.GEMMA, cache_dir=gemma.gemma_cache_dir())
    assert not model.from_cache and again.from_cache and model.source_hash == again.source_hash
    assert (model.config.family, model.config.n_layers, model.config.d_model, model.config.vocab_size) == \
        ("gemma3", 18, 640, 262_144)
    assert model.config.eos_token_ids == (1, 106) and model.config.name == gemma.GEMMA
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    for text in ("Hello  world ✨", "<start_of_turn>user\nhi<end_of_turn>\n"):
        assert again.tokenizer.encode(text) == model.tokenizer.encode(text)
    assert again.tokenizer.apply_chat_template(CHATS[0], tokenize=False, add_generation_prompt=True) == \
        model.tokenizer.apply_chat_template(CHATS[0], tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_long_prompt_logits_match_transformers_alone_and_left_padded(model, hf):
    ids = np.asarray(model.tokenizer(LONG_TEXT)["input_ids"])
    assert len(ids) - PAD_SHIFT > 600, len(ids)  # both rows past the 512-token window of the sliding layers
    theirs = hf_logits(hf, ids)
    ours = np.asarray(forward(model.params, ids[None], config=model.config).logits)[0]
    assert_close_logits(ours, theirs, "unpadded")

    # A batch of the full prompt and the prompt less its last PAD_SHIFT tokens, left-padded.
    short = ids[:-PAD_SHIFT]
    tokens = np.full((2, len(ids)), model.tokenizer.pad_token_id, np.int32)
    mask = np.zeros((2, len(ids)), bool)
    tokens[0], mask[0] = ids, True
    tokens[1, PAD_SHIFT:], mask[1, PAD_SHIFT:] = short, True
    batch = np.asarray(forward(model.params, tokens, config=model.config, mask=mask).logits)
    assert_close_logits(batch[0], theirs, "batch row 0 (no padding)")
    assert_close_logits(batch[1, PAD_SHIFT:], hf_logits(hf, short), f"batch row 1 ({PAD_SHIFT} pad slots)")


@pytest.mark.slow
def test_greedy_chat_replies_match_transformers(model, hf):
    out = generate(model, CHATS, max_new_tokens=REAL_NEW)
    assert len(set(out.prompt_lengths)) > 1  # a mixed-length, left-padded batch
    for row, chat in enumerate(CHATS):
        ids = torch.as_tensor(model.tokenizer(model.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True))["input_ids"])[None]
        with torch.no_grad():
            expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=REAL_NEW, do_sample=False,
                                   eos_token_id=list(model.config.eos_token_ids), pad_token_id=0)[0, ids.shape[1]:]
        assert [int(t) for t in out.tokens[row] if t >= 0] == expected.tolist(), f"prompt {row}: {out.texts[row]!r}"
