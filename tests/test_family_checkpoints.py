"""Every family end to end against transformers: a tiny random checkpoint written by `save_pretrained`
(every weight random, norms included; the newer families with 6 layers and a window of 4), loaded by
`load_model` from its safetensors directory, run on a left-padded batch whose prompts cross the window,
then 16 cached decode steps. Logits equal HF PyTorch float32 to 1e-4 at every real position: in the
prefill, at each decode step (HF with its own KV cache, emojax by `forward` with a cache and by the
decode step `generate` runs), and against each prompt alone; greedy generation gives HF's tokens.

The sliding window counts cache slots, as transformers' masks count cache positions; with left
padding a row's real tokens fill consecutive slots, so it is also the last `window` real positions.
"""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import left_padded, random_prompts
from hf_fixtures import FAMILIES, WINDOW, load_hf_model, make_tiny_checkpoint

from emojax import KVCache, forward
from emojax.generation.decode_step import decode_step, decode_weights
from emojax.generation.loop import generate_tokens
from emojax.loading import load_model

TOL = 1e-4
STEPS = 16
LENGTHS = (13, 7, 3)  # left-padded; the first two cross the window, the third fits in it
KV_HEADS = {"llama": 2, "qwen2": 2, "qwen3": 2, "mistral": 2, "gemma2": 2, "gemma3": 1}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    path = make_tiny_checkpoint(root, family=name, n_kv_heads=KV_HEADS[name], tie=name.startswith("gemma"),
                                seed=FAMILIES.index(name))
    model = load_model(path, cache_dir=root / "cache")
    return name, model, load_hf_model(path)


def _cache_kwarg(hf) -> str:
    """transformers 5 renamed `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def _hf_positions(mask: np.ndarray) -> np.ndarray:
    """Position ids of a left-padded batch as `generate` forms them (cumsum of the mask, minus one)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def test_the_checkpoint_has_the_family_options(family):
    name, model, hf = family
    cfg = model.config
    assert cfg.family == name
    if name in ("qwen3", "mistral", "gemma2", "gemma3"):
        assert cfg.sliding_window == WINDOW and cfg.n_layers == 6 and any(cfg.sliding_layers)
    if name.startswith("gemma"):
        assert cfg.post_norms and cfg.norm_offset == 1.0 and not all(cfg.sliding_layers)
        assert cfg.embed_scale == pytest.approx(cfg.d_model ** 0.5)
    if name == "gemma3":
        assert cfg.qk_norm and cfg.rope_local_theta == 1e4 and cfg.rope_theta == 1e6
    if name == "gemma2":
        assert cfg.attn_softcap == 10.0 and cfg.final_softcap == 5.0 and cfg.query_pre_attn_scalar == 24
    if name == "qwen3":
        assert cfg.qk_norm and cfg.head_dim == 24 and cfg.sliding_layers == (False,) * 3 + (True,) * 3


def test_prefill_and_16_cached_decode_steps_match_hf(family):
    name, model, hf = family
    cfg, params = model.config, model.params
    prompts = random_prompts(LENGTHS, cfg.vocab_size, seed=11)
    tokens, mask = left_padded(prompts, cfg.vocab_size)
    b, t = tokens.shape
    steps = np.random.default_rng(12).integers(0, cfg.vocab_size, (STEPS, b))

    # transformers: left-padded prefill with its own KV cache, then one token per step.
    with torch.no_grad():
        out = hf(input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask, dtype=torch.long),
                 position_ids=torch.as_tensor(_hf_positions(mask)), use_cache=True)
        theirs = [out.logits.numpy()]
        hf_cache = getattr(out, "cache", None) or out.past_key_values
        hf_mask, next_pos = mask.astype(np.int64), mask.sum(axis=1)
        for step in steps:
            hf_mask = np.concatenate([hf_mask, np.ones((b, 1), np.int64)], axis=1)
            out = hf(input_ids=torch.as_tensor(step[:, None]), attention_mask=torch.as_tensor(hf_mask),
                     position_ids=torch.as_tensor(next_pos[:, None]), use_cache=True, **{_cache_kwarg(hf): hf_cache})
            hf_cache = getattr(out, "cache", None) or out.past_key_values
            next_pos = next_pos + 1
            theirs.append(out.logits.numpy())

    # emojax: the same prefill into a static cache, then `forward` with the cache and the decode step.
    cache = KVCache.empty(cfg, b, t + STEPS)
    prefill = forward(params, tokens, config=cfg, mask=mask, cache=cache)
    np.testing.assert_allclose(np.asarray(prefill.logits)[mask], theirs[0][mask], rtol=0, atol=TOL,
                               err_msg=f"{name}: prefill")
    weights = decode_weights(params, cfg)
    step_fn = jax.jit(lambda token, c: decode_step(weights, token, c, config=cfg))
    by_forward, by_step = prefill.cache, prefill.cache.per_layer()
    for i, step in enumerate(steps):
        got = forward(params, step[:, None], config=cfg, cache=by_forward)
        by_forward = got.cache
        logits, by_step = step_fn(jnp.asarray(step), by_step)
        want = theirs[i + 1][:, 0]
        np.testing.assert_allclose(np.asarray(got.logits)[:, 0], want, rtol=0, atol=TOL, err_msg=f"{name}: step {i}")
        np.testing.assert_allclose(np.asarray(logits), want, rtol=0, atol=TOL, err_msg=f"{name}: decode step {i}")

    # Each prompt alone, no padding and no cache, equals its row of the batch.
    for row, prompt in enumerate(prompts):
        full = np.concatenate([prompt, steps[:, row]])[None]
        with torch.no_grad():
            alone = hf(input_ids=torch.as_tensor(full)).logits.numpy()[0]
        batch_rows = np.concatenate([np.asarray(prefill.logits)[row, mask[row]]] + [th[row] for th in theirs[1:]])
        np.testing.assert_allclose(batch_rows, alone, rtol=0, atol=TOL, err_msg=f"{name}: row {row} alone")


def test_greedy_generation_matches_hf_generate(family):
    name, model, hf = family
    cfg = model.config
    tokens, mask = left_padded(random_prompts(LENGTHS, cfg.vocab_size, seed=13), cfg.vocab_size)
    ours = generate_tokens(model.params, jnp.asarray(tokens), jnp.asarray(mask), config=cfg.replace(eos_token_ids=()),
                           max_new_tokens=STEPS)
    with torch.no_grad():
        theirs = hf.generate(input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask, dtype=torch.long),
                             max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, eos_token_id=None,
                             pad_token_id=0).numpy()[:, tokens.shape[1]:]
    np.testing.assert_array_equal(np.asarray(ours.tokens), theirs, err_msg=name)


# The HF tensor of each parameter, written out by hand (the loader's rules are emojax/weights/families.py).
_HF_NAMES = {"attn_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
             "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
             "w_down": "mlp.down_proj", "bq": "self_attn.q_proj", "bk": "self_attn.k_proj", "bv": "self_attn.v_proj",
             "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}
_LLAMA_NORMS = {"mlp_norm": "post_attention_layernorm"}
_GEMMA_NORMS = {"attn_post_norm": "post_attention_layernorm", "mlp_norm": "pre_feedforward_layernorm",
                "mlp_post_norm": "post_feedforward_layernorm"}


def test_params_equal_the_state_dict_bitwise(family):
    name, model, hf = family
    cfg, params = model.config, model.params
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    names = {**_HF_NAMES, **(_GEMMA_NORMS if cfg.post_norms else _LLAMA_NORMS)}
    expected_layers = set(names) - ({"bq", "bk", "bv"} if not cfg.qkv_bias else set()) - (
        {"q_norm", "k_norm"} if not cfg.qk_norm else set())
    assert set(params["layers"]) == expected_layers
    for ours in expected_layers:
        kind = "bias" if ours.startswith("b") else "weight"
        stored = [state[f"model.layers.{i}.{names[ours]}.{kind}"] for i in range(cfg.n_layers)]
        if ours.startswith("w"):
            stored = [s.T for s in stored]
        np.testing.assert_array_equal(np.asarray(params["layers"][ours]), np.stack(stored), err_msg=ours)
    np.testing.assert_array_equal(np.asarray(params["embed"]), state["model.embed_tokens.weight"])
    np.testing.assert_array_equal(np.asarray(params["final_norm"]), state["model.norm.weight"])
    assert ("lm_head" in params) == (not cfg.tie_embeddings)
