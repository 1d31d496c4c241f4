"""The transposed decode step against its definition: `forward` with a cache on tokens [B, 1], for
every tiny family and every edit field, shared and per row, on each position selector."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_HF_CONFIGS, left_padded, random_prompts
from emojax.generation.decode_step import decode_step, decode_weights
from emojax.model.forward import forward
from emojax.model.interventions import Intervention
from emojax.model.kv_cache import KVCache

LENGTHS = [6, 3, 9]
STEPS = 3  # decode steps after the prompt, so edits on generated positions are reached


def random_edits(config, rows: int | None, seed: int, **where: str) -> Intervention:
    """Every edit field non-trivial; per row ([L, B, ...]) when `rows` is given."""
    rng = np.random.default_rng(seed)
    iv = Intervention.identity(config, **where)
    batch = () if rows is None else (rows,)

    def draw(field: str, mean: float) -> jnp.ndarray:
        shape = getattr(iv, field).shape
        return jnp.asarray(rng.normal(mean, 0.3, shape[:1] + batch + shape[1:]), jnp.float32)

    return iv.replace(resid_add=draw("resid_add", 0.0), resid_add_rms=draw("resid_add_rms", 0.0),
                      neuron_scale=draw("neuron_scale", 1.0), neuron_add=draw("neuron_add", 0.0),
                      head_scale=draw("head_scale", 1.0), head_add=draw("head_add", 0.0))


def compare_steps(model, iv: Intervention | None) -> None:
    """Prefill with `forward`, then STEPS steps by `forward` and by `decode_step` from the same cache."""
    config, params = model.config, model.params
    tokens, mask = left_padded(random_prompts(LENGTHS, config.vocab_size), config.vocab_size)
    cache = KVCache.empty(config, len(LENGTHS), tokens.shape[1] + STEPS)
    cache = forward(params, tokens, config=config, mask=mask, cache=cache, iv=iv, logits="last").cache
    weights = decode_weights(params, config)
    step = jax.jit(lambda token, cache: decode_step(weights, token, cache, config=config, iv=iv))
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (STEPS, len(LENGTHS)))
    ours, theirs = cache.per_layer(), cache
    for token in ids:
        logits, ours = step(jnp.asarray(token), ours)
        reference = forward(params, jnp.asarray(token)[:, None], config=config, cache=theirs, iv=iv, logits="last")
        theirs = reference.cache
        np.testing.assert_allclose(np.asarray(logits), np.asarray(reference.logits[:, 0]), atol=2e-5, rtol=1e-5)
        for field in ("k", "v"):
            np.testing.assert_allclose(np.asarray(getattr(ours.stacked(), field)),
                                       np.asarray(getattr(theirs, field)), atol=2e-5, rtol=1e-5)
        for field in ("valid", "length", "next_pos", "t_star"):
            np.testing.assert_array_equal(np.asarray(getattr(ours, field)), np.asarray(getattr(theirs, field)))


@pytest.mark.parametrize("name", sorted(TINY_HF_CONFIGS))
def test_plain_step_equals_forward_with_cache(tiny_model, name):
    compare_steps(tiny_model(name), None)


# Each group of fields on a different selector; the first two cases swap them round, the third turns
# one group off.
SELECTOR_MIXES = {"shared": dict(resid_where="all", neuron_where="from_last", head_where="last"),
                  "per_row": dict(resid_where="from_last", neuron_where="last", head_where="all"),
                  "resid_off": dict(resid_where="none", neuron_where="all", head_where="from_last")}


@pytest.mark.parametrize("case", sorted(SELECTOR_MIXES))
def test_every_edit_field_equals_forward_on_its_position_set(tiny_model, case):
    model = tiny_model("llama_gqa_tied")
    iv = random_edits(model.config, len(LENGTHS) if case == "per_row" else None, seed=3, **SELECTOR_MIXES[case])
    compare_steps(model, iv)


def test_mask_selector_reaches_chosen_generated_positions(tiny_model):
    model = tiny_model("qwen2_bias")
    width = max(LENGTHS) + STEPS
    chosen = np.zeros((len(LENGTHS), width), bool)
    for row, n in enumerate(LENGTHS):
        chosen[row, n + row % STEPS] = True  # one generated position per row, a different step each
    iv = random_edits(model.config, None, seed=4, head_where="from_last")
    compare_steps(model, iv.replace(neuron_where="mask", neuron_mask=jnp.asarray(chosen)))
