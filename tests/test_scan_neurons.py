"""Neuron scans: analytic contributions (S4a) and the exact causal scan vs one forward per neuron.

Tolerance: float32, 2e-5 relative to the largest score.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emojax.model.forward import forward
from emojax.model.interventions import Intervention, stack_variants
from emojax.scan import (capture_prefix, causal_neuron_scan, group_mean_replacement, mean_replacement,
                         neuron_contributions, neuron_edit_scores, neuron_stats, resample_replacement)
from emojax.model.taps import TapSpec
from emojax.scan.brute import brute_neuron_scan, intervention_scores

RTOL = 2e-5


def assert_close(fast, slow, scale):
    np.testing.assert_allclose(fast, slow, rtol=0, atol=RTOL * max(1.0, scale))


@pytest.fixture(scope="module")
def setup(tiny_model):
    model = tiny_model("llama_gqa_tied")
    cfg = model.config
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (4, 6))
    mask = np.ones(tokens.shape, bool)
    mask[1, :2] = False
    mask[3, :3] = False
    prefix = capture_prefix(model.params, tokens, mask, config=cfg, keep_sequence=True)
    readout = rng.normal(size=(tokens.shape[0], cfg.d_model)).astype(np.float32)
    return model, tokens, mask, prefix, readout


def test_contributions_sum_to_the_mlp_output_projection(setup):
    model, tokens, mask, prefix, _ = setup
    cfg = model.config
    dirs = np.random.default_rng(1).normal(size=(tokens.shape[0], cfg.n_layers, cfg.d_model)).astype(np.float32)
    c = neuron_contributions(model.params, prefix.g, dirs)
    mlp_out = forward(model.params, jnp.asarray(tokens), config=cfg, mask=jnp.asarray(mask), logits="none",
                      taps=TapSpec(points=("mlp_out",), at="last")).taps["mlp_out"]
    want = np.einsum("bld,bld->bl", mlp_out, dirs)
    np.testing.assert_allclose(c.sum(axis=-1), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_stats_are_per_emotion_means(setup):
    model, tokens, _, prefix, _ = setup
    cfg = model.config
    rng = np.random.default_rng(2)
    dirs = rng.normal(size=(3, cfg.n_layers, cfg.d_model)).astype(np.float32)
    labels = np.array([0, 2, 0, 2])  # emotion 1 has no items
    stats = neuron_stats(model.params, prefix.g, labels, dirs, chunk=3)
    c = neuron_contributions(model.params, prefix.g, dirs[labels])
    g = np.asarray(prefix.g)
    for e in (0, 2):
        rows = labels == e
        np.testing.assert_allclose(stats["C_mean"][e], c[rows].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["C_pos"][e], np.maximum(c[rows], 0).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["C_neg"][e], np.maximum(-c[rows], 0).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["H_mean"][e], g[rows].mean(0), rtol=1e-5, atol=1e-6)
    assert np.isnan(stats["C_mean"][1]).all() and stats["count"].tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match="labels"):
        neuron_stats(model.params, prefix.g, np.array([0, 1, 2, 3]), dirs)


def test_causal_scan_equals_one_forward_per_neuron(setup):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    neurons = [0, 5, 17, cfg.d_ff - 1]
    fast = causal_neuron_scan(model.params, prefix, readout, config=cfg, neurons=neurons, chunk=3)
    slow = brute_neuron_scan(model.params, tokens, mask, readout=readout, config=cfg, neurons=neurons)
    scale = np.abs(slow.base).max()
    assert fast.effect.shape == (cfg.n_layers, len(neurons), tokens.shape[0])
    assert_close(fast.effect, slow.effect, scale)
    assert np.abs(slow.effect).max() > 1e-3


def test_mean_group_mean_and_resample_ablation(setup):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    g = np.asarray(prefix.g)
    neurons = [3, 40]
    mean = mean_replacement(g)
    group = group_mean_replacement(g, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(group[0], g[:2].mean(0), rtol=1e-6)
    for rep in (mean, group):
        fast = causal_neuron_scan(model.params, prefix, readout, config=cfg, neurons=neurons, replacement=rep)
        slow = brute_neuron_scan(model.params, tokens, mask, readout=readout, config=cfg, neurons=neurons,
                                 replacement=rep)
        assert_close(fast.effect, slow.effect, np.abs(slow.base).max())
    labels = np.array([0, 1, 0, 1])
    draws = resample_replacement(labels, g, labels, draws=2, seed=0)
    assert draws.shape == (2,) + g.shape
    for r in range(2):
        for i in range(4):  # every draw is some item of another emotion
            sources = [j for j in range(4) if np.array_equal(draws[r, i], g[j])]
            assert sources and all(labels[j] != labels[i] for j in sources)
    fast = causal_neuron_scan(model.params, prefix, readout, config=cfg, neurons=neurons, replacement=draws,
                              layers=[0])
    slow = np.mean([brute_neuron_scan(model.params, tokens, mask, readout=readout, config=cfg, neurons=neurons,
                                      replacement=draws[r], layers=[0]).effect for r in range(2)], axis=0)
    assert_close(fast.effect, slow, np.abs(fast.base).max())


@pytest.mark.parametrize("positions", ["last", "all"])
def test_neuron_sets_edit(setup, positions):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    rng = np.random.default_rng(3)
    scale = (rng.random((2, cfg.d_ff)) > 0.2).astype(np.float32)
    add = rng.normal(size=(2, cfg.d_ff)).astype(np.float32) * 0.3
    layer = 1
    fast = neuron_edit_scores(model.params, prefix, layer, scale=scale, add=add, readout=readout, config=cfg,
                              positions=positions)
    ivs = []
    for s in range(2):
        iv = Intervention.identity(cfg).with_where(neuron=positions)
        ivs.append(iv.replace(neuron_scale=iv.neuron_scale.at[layer].set(scale[s]),
                              neuron_add=iv.neuron_add.at[layer].set(add[s])))
    slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
    assert_close(fast, slow, np.abs(slow).max())
