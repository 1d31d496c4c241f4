"""The Python API refuses, naming the argument, inputs it used to run with silently: interventions
built for another config, out-of-range (and negative) builder indices, token ids outside the
vocabulary, a mask of another shape, and non-finite edits passed to `generate`."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from emojax import Intervention, forward, generate
from emojax.model.params import random_params
from stage_fixtures import TINY_CONFIG, tiny_loaded_model

CONFIG = TINY_CONFIG  # 4 layers, 4 heads, d_ff 48, d_model 32


@pytest.fixture(scope="module")
def params():
    return random_params(CONFIG, seed=3, scale=0.3)


def _tokens(batch: int = 2, width: int = 5) -> np.ndarray:
    return np.arange(batch * width, dtype=np.int32).reshape(batch, width) % CONFIG.vocab_size


@pytest.mark.parametrize("build, says", [
    (lambda iv: iv.zero_heads([(0, 4)]), r"zero_heads: head index 4 is out of range \(valid 0..3\)"),
    (lambda iv: iv.zero_heads([(0, -1)]), r"zero_heads: head index -1 is out of range"),
    (lambda iv: iv.zero_heads([(4, 0)]), r"zero_heads: layer index 4 is out of range \(valid 0..3\)"),
    (lambda iv: iv.zero_heads([(-1, 0)]), r"zero_heads: layer index -1 is out of range"),
    (lambda iv: iv.zero_heads([(0, 1.0)]), r"zero_heads: head index 1.0 is not an integer"),
    (lambda iv: iv.zero_neurons([(0, 48)]), r"zero_neurons: neuron index 48 is out of range \(valid 0..47\)"),
    (lambda iv: iv.zero_neurons([(0, -1)]), r"zero_neurons: neuron index -1 is out of range"),
    (lambda iv: iv.zero_neurons([(12, 0)]), r"zero_neurons: layer index 12 is out of range"),
    (lambda iv: iv.add_resid(4, 1, jnp.zeros(32)), r"add_resid: layer index 4 is out of range"),
    (lambda iv: iv.add_resid(0, 2, jnp.zeros(32)), r"add_resid: site index 2 is out of range \(valid 0..1\)"),
    (lambda iv: iv.add_resid(0, 1, jnp.zeros(33)), r"add_resid: vector has shape \(33,\), expected \(32,\)"),
])
def test_builders_refuse_indices_outside_the_config(build, says):
    with pytest.raises(ValueError, match=says):
        build(Intervention.identity(CONFIG))


def test_builders_accept_every_valid_index():
    iv = Intervention.identity(CONFIG).zero_heads([(3, 3), (0, 0)]).zero_neurons([(3, 47), (np.int64(1), 2)])
    assert float(iv.head_scale.sum()) == CONFIG.n_layers * CONFIG.n_heads - 2
    assert float(iv.neuron_scale.sum()) == CONFIG.n_layers * CONFIG.d_ff - 2


@pytest.mark.parametrize("other, field", [
    (dict(d_ff=1), "neuron_scale"),          # broadcasts against [.., 48]: would zero every neuron
    (dict(n_layers=2), "resid_add"),         # a raw scan error before
    (dict(n_heads=1, n_kv_heads=1), "head_scale"),
])
def test_an_intervention_for_another_config_is_refused(params, other, field):
    iv = Intervention.identity(dataclasses.replace(CONFIG, **other))
    with pytest.raises(ValueError, match=rf"iv: Intervention.{field} has shape .*model 'tiny' needs"):
        forward(params, _tokens(), config=CONFIG, iv=iv)


def test_a_per_row_intervention_needs_one_row_per_prompt(params):
    iv = Intervention.identity(CONFIG)
    per_row = iv.replace(head_scale=jnp.ones((CONFIG.n_layers, 3, CONFIG.n_heads)))
    with pytest.raises(ValueError, match=r"Intervention.head_scale has shape \(4, 3, 4\)"):
        forward(params, _tokens(batch=2), config=CONFIG, iv=per_row)
    rows_match = iv.replace(head_scale=jnp.ones((CONFIG.n_layers, 2, CONFIG.n_heads)))
    forward(params, _tokens(batch=2), config=CONFIG, iv=rows_match, logits="last")


@pytest.mark.parametrize("bad_id", [CONFIG.vocab_size, 10 ** 6, -1])
def test_token_ids_outside_the_vocabulary_are_refused(params, bad_id):
    tokens = _tokens()
    tokens[1, 2] = bad_id
    vocab = CONFIG.vocab_size
    with pytest.raises(ValueError, match=rf"forward: tokens holds ids outside the vocabulary \[0, {vocab}\) "
                                         rf"\(1 of them, e.g. {bad_id}\)"):
        forward(params, tokens, config=CONFIG)
    model = tiny_loaded_model()
    with pytest.raises(ValueError, match=r"generate: tokens holds ids outside the vocabulary"):
        generate(model, (tokens, np.ones(tokens.shape, bool)), max_new_tokens=2)


def test_a_mask_of_another_shape_is_refused(params):
    tokens = _tokens()
    with pytest.raises(ValueError, match=r"forward: mask has shape \(2, 4\), but tokens has \(2, 5\)"):
        forward(params, tokens, config=CONFIG, mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"generate: pre-tokenised prompts need tokens and mask of one shape"):
        generate(tiny_loaded_model(), (tokens, np.ones((2, 4), bool)), max_new_tokens=2)


def test_a_non_finite_steering_vector_is_refused_by_generate():
    model = tiny_loaded_model()
    vector = np.zeros(CONFIG.d_model, np.float32)
    vector[5] = np.nan
    iv = Intervention.identity(CONFIG, resid_where="from_last").add_resid(1, 1, jnp.asarray(vector), rms_scaled=True)
    with pytest.raises(ValueError, match=r"generate: iv holds nan or inf in Intervention.resid_add_rms"):
        generate(model, (_tokens(), np.ones((2, 5), bool)), max_new_tokens=2, iv=iv)


def test_generate_flags_rows_whose_logits_were_not_finite():
    model = tiny_loaded_model()
    embed = np.array(model.params["embed"])
    embed[7] = np.nan  # the head is tied: the logit of id 7 is nan in every row
    broken = dataclasses.replace(model, params={**model.params, "embed": jnp.asarray(embed)})
    tokens = np.array([[3, 8, 4], [3, 5, 4]], np.int32)
    out = generate(broken, (tokens, np.ones(tokens.shape, bool)), max_new_tokens=3)
    assert out.nonfinite.tolist() == [True, True]
    assert not generate(model, (tokens, np.ones(tokens.shape, bool)), max_new_tokens=3).nonfinite.any()
