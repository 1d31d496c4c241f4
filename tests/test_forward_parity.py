"""The forward pass equals Hugging Face PyTorch (float32): every family and option on tiny random
models, left-padded batches, cached decoding, and the real default model; configs emojax cannot run
faithfully are rejected with an error naming the field."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_HF_CONFIGS, hf_logits, left_padded, random_prompts

from emojax import KVCache, forward
from emojax.model.config import ConfigError, config_from_hf

TOL = 1e-4
SEQ = 200  # long enough that a wrong rotary frequency shows in the logits
LENGTHS = (SEQ, 131, 37)  # a left-padded batch of three prompts


@pytest.mark.parametrize("name", sorted(TINY_HF_CONFIGS))
def test_logits_match_hf(tiny_model, name):
    m = tiny_model(name)
    tokens = np.random.default_rng(1).integers(0, m.config.vocab_size, (2, SEQ))
    ours = np.asarray(forward(m.params, tokens, config=m.config).logits)
    np.testing.assert_allclose(ours, hf_logits(m.hf, tokens), rtol=0, atol=TOL)


def test_left_padded_batch_equals_single_prompts(tiny_model):
    m = tiny_model("llama3_rope")
    prompts = random_prompts(LENGTHS, m.config.vocab_size, seed=2)
    tokens, mask = left_padded(prompts, m.config.vocab_size)
    batch = np.asarray(forward(m.params, tokens, config=m.config, mask=mask).logits)
    for row, prompt in enumerate(prompts):
        real = batch[row, mask[row]]
        single = np.asarray(forward(m.params, prompt[None], config=m.config).logits)[0]
        np.testing.assert_allclose(real, single, rtol=0, atol=TOL, err_msg=f"row {row} vs emojax alone")
        np.testing.assert_allclose(real, hf_logits(m.hf, prompt[None])[0], rtol=0, atol=TOL,
                                   err_msg=f"row {row} vs HF alone")


def test_last_logits_mode_is_the_last_row_of_all(tiny_model):
    m = tiny_model("llama3_rope")
    tokens, mask = left_padded(random_prompts(LENGTHS, m.config.vocab_size, seed=3), m.config.vocab_size)
    full = forward(m.params, tokens, config=m.config, mask=mask).logits
    last = forward(m.params, tokens, config=m.config, mask=mask, logits="last").logits
    assert last.shape == (len(LENGTHS), 1, m.config.vocab_size)
    # A smaller product may be summed in another order (GPU kernels do): equal up to float32 rounding
    # of sums whose terms reach the logits' scale, so the bound is relative to the largest logit.
    full = np.asarray(full)
    np.testing.assert_allclose(np.asarray(last), full[:, -1:], rtol=0, atol=1e-6 * np.abs(full).max())
    assert forward(m.params, tokens, config=m.config, mask=mask, logits="none").logits is None


def test_cached_decoding_equals_full_forward(tiny_model):
    """Prefill a left-padded batch, then feed tokens one at a time and then a chunk of four:
    every logit equals the full forward over the whole sequence, and HF on each prompt alone."""
    m = tiny_model("llama3_rope")
    prompts = random_prompts((60, 41, 9), m.config.vocab_size, seed=4)
    tokens, mask = left_padded(prompts, m.config.vocab_size)
    extra = np.random.default_rng(5).integers(0, m.config.vocab_size, (len(prompts), 10))
    full_tokens = np.concatenate([tokens, extra], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(extra, bool)], axis=1)
    full = np.asarray(forward(m.params, full_tokens, config=m.config, mask=full_mask).logits)

    cache = KVCache.empty(m.config, len(prompts), slots=full_tokens.shape[1] + 6)
    out = forward(m.params, tokens, config=m.config, mask=mask, cache=cache)
    pieces = [np.asarray(out.logits)]
    for step in range(6):
        out = forward(m.params, extra[:, step:step + 1], config=m.config, cache=out.cache)
        pieces.append(np.asarray(out.logits))
    out = forward(m.params, extra[:, 6:], config=m.config, cache=out.cache)
    pieces.append(np.asarray(out.logits))
    cached = np.concatenate(pieces, axis=1)

    np.testing.assert_allclose(cached[full_mask], full[full_mask], rtol=0, atol=TOL)
    assert int(out.cache.length) == full_tokens.shape[1]
    np.testing.assert_array_equal(np.asarray(out.cache.next_pos), [len(p) + 10 for p in prompts])
    for row, prompt in enumerate(prompts):
        alone = hf_logits(m.hf, np.concatenate([prompt, extra[row]])[None])[0]
        np.testing.assert_allclose(cached[row, full_mask[row]], alone, rtol=0, atol=TOL, err_msg=f"row {row}")


@pytest.mark.parametrize("family, rope_scaling", [("qwen2", None), ("llama", "llama3")])
def test_checkpoint_on_disk_loaded_by_load_model_matches_hf(tmp_path, family, rope_scaling):
    """The user's path end to end: a checkpoint directory written by transformers, read by
    `load_model`, run on a left-padded batch, equals HF on each prompt alone."""
    from hf_fixtures import LLAMA3_ROPE_SCALING, load_hf_model, make_tiny_checkpoint

    from emojax.loading import load_model

    path = make_tiny_checkpoint(tmp_path, family=family, rope_scaling=rope_scaling and LLAMA3_ROPE_SCALING)
    loaded = load_model(path, cache_dir=tmp_path / "cache")
    hf = load_hf_model(path)
    prompts = random_prompts(LENGTHS, loaded.config.vocab_size, seed=6)
    tokens, mask = left_padded(prompts, loaded.config.vocab_size)
    ours = np.asarray(forward(loaded.params, tokens, config=loaded.config, mask=mask).logits)
    for row, prompt in enumerate(prompts):
        np.testing.assert_allclose(ours[row, mask[row]], hf_logits(hf, prompt[None])[0], rtol=0, atol=TOL,
                                   err_msg=f"row {row}")


# A fixed English text; tokenised it is well over 300 tokens for the default model.
LONG_TEXT = " ".join([
    "The lighthouse keeper had lived on the island for thirty-one years, and in all that time he had",
    "never once missed lighting the lamp at dusk. Storms came in from the west and battered the rocks;",
    "supply boats were late by weeks; his letters to the mainland went unanswered for whole seasons.",
    "Still, every evening he climbed the one hundred and twelve steps, trimmed the wick, polished the",
    "great lens with a soft cloth, and watched the beam sweep out across the dark water. One autumn a",
    "young woman arrived on the supply boat with a suitcase, a notebook and a letter from the harbour",
    "authority. The light, the letter said, was to be automated in the spring. She had come to survey",
    "the tower, to measure the gallery and the stairwell, and to decide where the new machinery would",
    "go. He read the letter twice, folded it carefully along its creases, and put the kettle on the",
    "stove without a word. Over the following weeks they fell into a routine. In the mornings she",
    "climbed the tower with her tape measure and her camera, and he mended nets on the jetty or",
    "repainted the window frames that the salt had blistered. In the afternoons they ate bread and",
    "smoked fish at the kitchen table while the wind rattled the glass. She asked him questions about",
    "the lamp, about the clockwork that once turned the lens, about the winter of the great storm when",
    "the sea had come right over the island and put out the fires in every house on the coast. He",
    "answered slowly at first, then with growing pleasure, drawing diagrams on the backs of envelopes",
    "and fetching logbooks from a cupboard that had not been opened in a decade. By the time the first",
    "snow fell she had filled three notebooks, and the survey she sent back to the harbour authority",
    "ran to ninety pages, most of which had nothing to do with machinery at all. In the spring the",
    "engineers came, as promised, and installed a small grey cabinet that hummed quietly at the foot",
    "of the stairs. The keeper stayed on. Nobody had told him to leave, and nobody, it seemed, had the",
    "heart to. Each evening, out of habit, he still climbed the steps at dusk, and each evening the",
    "lamp came on a moment before he reached the top, as if it had been waiting for him.",
])


@pytest.mark.real_model
@pytest.mark.slow
def test_default_model_matches_hf_on_a_long_prompt(hf_smollm2, default_model):
    model, tokenizer = hf_smollm2
    tokens = np.asarray(tokenizer(LONG_TEXT)["input_ids"])[None]
    assert tokens.shape[1] >= 300, tokens.shape
    params, config = default_model.params, default_model.config
    ours = np.asarray(forward(params, tokens, config=config).logits)[0]
    theirs = hf_logits(model, tokens)[0]
    assert np.abs(ours - theirs).max() <= 1e-3
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


# Config fields that change the math and are not implemented: each rejection names its field.
_BASE = TINY_HF_CONFIGS["llama_gqa_tied"]


@pytest.mark.parametrize("changes, field", [
    ({"model_type": "gemma"}, "model_type"),
    ({"model_type": "phi3"}, "model_type"),
    ({"model_type": "gemma3"}, "model_type"),  # the multimodal wrapper, not its text model
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"sliding_window": 128, "use_sliding_window": True}, "sliding_window"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"layer_types": ["full_attention", "sliding_attention", "full_attention"]}, "layer_types"),
    # Options of the newer families that emojax does not implement, each refused by name.
    ({"model_type": "gemma2", "hidden_activation": "gelu"}, "hidden_activation"),
    ({"model_type": "gemma3_text", "attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}}, "sliding_attention"),
    ({"model_type": "gemma3_text", "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "rope_scaling"),
    ({"model_type": "gemma2", "layer_types": ["full_attention", "chunked_attention", "full_attention"]},
     "layer_types"),
    ({"model_type": "qwen3", "attention_bias": True}, "attention_bias"),
    ({"model_type": "mistral", "sliding_window": 8,
      "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}, "layer_types"),
    ({"model_type": "qwen2", "mlp_bias": True}, "mlp_bias"),
])
def test_unsupported_config_is_rejected_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        config_from_hf({**_BASE, **changes}, source="config.json")


def test_disabled_qwen2_sliding_window_is_accepted():
    config = config_from_hf({**TINY_HF_CONFIGS["qwen2_bias"], "sliding_window": 131072,
                             "use_sliding_window": False})
    assert config.qkv_bias and config.family == "qwen2"


@pytest.mark.parametrize("name", ["llama3_rope", "qwen2_bias"])
def test_config_saved_by_installed_transformers_reads_the_same(tmp_path, name):
    """A config.json written by the installed transformers (which may move the rope fields into
    `rope_parameters` and add `layer_types`) describes the same model as the original file."""
    from transformers import AutoConfig

    from emojax.weights.safetensors_loader import hf_config

    raw = TINY_HF_CONFIGS[name]
    AutoConfig.for_model(raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"}
                         ).save_pretrained(tmp_path)
    assert hf_config(tmp_path) == config_from_hf(raw)
