"""Prefix capture and one-token suffix passes == full forwards with the same edit at t*.

Tolerance: float32, |fast - brute| <= 2e-5 * max|score| (observed ~3e-7).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emojax.model.forward import forward
from emojax.model.interventions import Intervention, stack_variants
from emojax.model.taps import TapSpec
from emojax.scan import capture_prefix, clean_scores, suffix_intervention_scores, suffix_scores
from emojax.scan.brute import intervention_scores

RTOL = 2e-5


def left_padded_batch(config, seed=0, batch=3, length=7):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (batch, length))
    mask = np.ones((batch, length), bool)
    for row in range(1, batch):
        mask[row, : min(row * 2, length - 2)] = False
    return tokens, mask


def assert_scores_close(fast, slow):
    np.testing.assert_allclose(fast, slow, rtol=0, atol=RTOL * max(1.0, np.abs(slow).max()))


def build_setup(model):
    tokens, mask = left_padded_batch(model.config)
    prefix = capture_prefix(model.params, tokens, mask, config=model.config)
    rng = np.random.default_rng(1)
    readout = rng.normal(size=(tokens.shape[0], model.config.d_model)).astype(np.float32)
    return model, tokens, mask, prefix, readout


@pytest.fixture(scope="module")
def setup(tiny_model):
    """GQA with q/k/v biases."""
    return build_setup(tiny_model("qwen2_bias"))


@pytest.fixture(scope="module", params=["qwen2_bias", "llama_gqa_wide_heads"])
def any_setup(request, tiny_model):
    """Also a model whose heads are wider than the residual stream (H * Dh != D)."""
    return build_setup(tiny_model(request.param))


def test_prefix_holds_the_forward_state_at_t_star(setup):
    model, tokens, mask, prefix, _ = setup
    out = forward(model.params, jnp.asarray(tokens), config=model.config, mask=jnp.asarray(mask), logits="none",
                  taps=TapSpec(points=("resid_mid", "resid_post", "g", "final"), at="last"))
    for name in ("resid_mid", "resid_post", "g", "final"):
        np.testing.assert_allclose(getattr(prefix, name), out.taps[name], rtol=1e-5, atol=1e-5)
    assert prefix.k.shape[2] == tokens.shape[1] - 1
    np.testing.assert_array_equal(prefix.valid, mask[:, :-1])
    np.testing.assert_array_equal(prefix.last_pos, mask.sum(axis=1) - 1)


def test_prefix_rejects_right_padding(setup):
    model, tokens, mask, _, _ = setup
    bad = mask.copy()
    bad[0, -1] = False
    with pytest.raises(ValueError, match="left-padded"):
        capture_prefix(model.params, tokens, bad, config=model.config)


@pytest.mark.parametrize("per_row", [True, False])
def test_suffix_matches_full_forward_at_every_site(any_setup, per_row):
    model, tokens, mask, prefix, readout = any_setup
    cfg, b = model.config, tokens.shape[0]
    rng = np.random.default_rng(2)
    shape = (4, b, cfg.d_model) if per_row else (4, cfg.d_model)
    deltas = rng.normal(size=shape).astype(np.float32)
    for layer in range(cfg.n_layers):
        for sub in ("attn", "mlp"):
            fast = suffix_scores(model.params, prefix, deltas, layer=layer, sublayer=sub, readout=readout, config=cfg)
            ivs = []
            for delta in deltas:
                add = np.zeros((cfg.n_layers, b, 2, cfg.d_model), np.float32)
                add[layer, :, ("attn", "mlp").index(sub)] = delta
                ivs.append(Intervention.identity(cfg).with_where(resid="last").replace(resid_add=jnp.asarray(add)))
            slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
            assert_scores_close(fast, slow)
            assert np.abs(slow - clean_scores(prefix, readout)).max() > 1e-2  # the edit matters


def test_suffix_groups_mixed_sites_and_several_readouts(setup):
    model, tokens, mask, prefix, readout = setup
    cfg, b = model.config, tokens.shape[0]
    rng = np.random.default_rng(3)
    deltas = rng.normal(size=(6, b, cfg.d_model)).astype(np.float32)
    layers = np.array([2, 0, 1, 2, 0, 1]) % cfg.n_layers
    subs = np.array(["mlp", "attn", "mlp", "attn", "mlp", "attn"])
    readouts = rng.normal(size=(b, 2, cfg.d_model)).astype(np.float32)
    mixed = suffix_scores(model.params, prefix, deltas, layer=layers, sublayer=subs, readout=readouts,
                          config=cfg, chunk=1)
    assert mixed.shape == (6, b, 2)
    for v in range(6):
        one = suffix_scores(model.params, prefix, deltas[v:v + 1], layer=int(layers[v]), sublayer=subs[v],
                            readout=readouts[:, 1], config=cfg)
        assert_scores_close(mixed[v, :, 1], one[0])


def test_zero_delta_gives_the_clean_score(setup):
    model, _, _, prefix, readout = setup
    zero = np.zeros((1, model.config.d_model), np.float32)
    got = suffix_scores(model.params, prefix, zero, layer=0, sublayer="attn", readout=readout, config=model.config)
    assert_scores_close(got[0], clean_scores(prefix, readout))


def test_multi_layer_last_position_interventions(setup):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    iv = Intervention.identity(cfg).with_where(neuron="last", head="last", resid="last")
    ivs = stack_variants([
        iv.zero_heads([(0, 1), (cfg.n_layers - 1, 0)]).zero_neurons([(1, 3), (0, 5)]),
        iv.add_resid(0, 1, jnp.ones(cfg.d_model), rms_scaled=True).zero_neurons([(cfg.n_layers - 1, 7)]),
    ])
    fast = suffix_intervention_scores(model.params, prefix, ivs, readout=readout, config=cfg)
    slow = intervention_scores(model.params, tokens, mask, ivs, readout=readout, config=cfg)
    assert_scores_close(fast, slow)


def test_edits_before_t_star_are_refused(setup):
    model, _, _, prefix, readout = setup
    ivs = stack_variants([Intervention.identity(model.config).zero_heads([(0, 0)])])  # head_where="all"
    with pytest.raises(ValueError, match="head_where='all'"):
        suffix_intervention_scores(model.params, prefix, ivs, readout=readout, config=model.config)


def test_bad_sublayer_and_layer_are_named(setup):
    model, _, _, prefix, readout = setup
    zero = np.zeros((1, model.config.d_model), np.float32)
    with pytest.raises(ValueError, match="sublayer"):
        suffix_scores(model.params, prefix, zero, layer=0, sublayer="ffn", readout=readout, config=model.config)
    with pytest.raises(ValueError, match="layer out of range"):
        suffix_scores(model.params, prefix, zero, layer=model.config.n_layers, sublayer="mlp", readout=readout,
                      config=model.config)
