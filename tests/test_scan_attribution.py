"""Attribution patching == finite differences to first order; ranks agree with the exact scans;
integrated gradients satisfy completeness per layer."""
from __future__ import annotations

import numpy as np
import pytest

from emojax.model.interventions import Intervention, stack_variants
from emojax.scan import (attribution_scores, capture_prefix, causal_head_scan, causal_neuron_scan,
                         head_edit_scores, neuron_edit_scores)
from emojax.scan.brute import intervention_scores

EPS = 1e-2


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def setup(tiny_model):
    model = tiny_model("qwen2_bias")
    cfg = model.config
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (3, 6))
    mask = np.ones(tokens.shape, bool)
    mask[1, :2] = False
    readout = rng.normal(size=(tokens.shape[0], cfg.d_model)).astype(np.float32)
    neuron_ref = rng.normal(size=(cfg.n_layers, cfg.d_ff)).astype(np.float32) * 0.1
    attr = attribution_scores(model.params, tokens, mask, readout, config=cfg, neuron_replacement=neuron_ref)
    return model, tokens, mask, readout, neuron_ref, attr


def test_attribution_equals_central_finite_differences(setup):
    model, tokens, mask, readout, neuron_ref, attr = setup
    cfg = model.config
    z_ref = np.zeros((cfg.n_heads, cfg.head_dim), np.float32)
    sites_n = [(0, 4), (1, 50), (2, 99)]
    sites_h = [(0, 1), (1, 3), (2, 0)]
    identity = Intervention.identity(cfg).with_where(neuron="last", head="all")
    ivs = []
    for step in (EPS, -EPS):  # move a toward a_ref by a fraction step: a + step * (a_ref - a)
        for layer, j in sites_n:
            iv = identity
            ivs.append(iv.replace(neuron_scale=iv.neuron_scale.at[layer, j].set(1 - step),
                                  neuron_add=iv.neuron_add.at[layer, j].set(step * neuron_ref[layer, j])))
        for layer, h in sites_h:
            iv = identity  # heads at every position, toward zero
            ivs.append(iv.replace(head_scale=iv.head_scale.at[layer, h].set(1 - step),
                                  head_add=iv.head_add.at[layer, h].set(step * z_ref[h])))
    scores = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
    n = len(sites_n) + len(sites_h)
    central = (scores[:n] - scores[n:]) / (2 * EPS)
    want = np.stack([attr.neurons[l, j] for l, j in sites_n] + [attr.heads[l, h] for l, h in sites_h])
    np.testing.assert_allclose(want, central, rtol=2e-3, atol=2e-3 * np.abs(central).max())
    assert np.abs(central).max() > 1e-2


def test_attribution_ranks_follow_the_exact_scans(setup):
    model, tokens, mask, readout, neuron_ref, attr = setup
    cfg = model.config
    prefix = capture_prefix(model.params, tokens, mask, config=cfg, keep_sequence=True)
    exact_n = causal_neuron_scan(model.params, prefix, readout, config=cfg, replacement=neuron_ref).effect
    exact_h = causal_head_scan(model.params, prefix, readout, config=cfg, positions="all").effect
    assert spearman(attr.neurons.ravel(), exact_n.ravel()) > 0.9
    assert spearman(attr.heads.ravel(), exact_h.ravel()) > 0.8


def test_integrated_gradients_are_complete_per_layer(setup):
    model, tokens, mask, readout, neuron_ref, _ = setup
    cfg = model.config
    prefix = capture_prefix(model.params, tokens, mask, config=cfg, keep_sequence=True)
    ig = attribution_scores(model.params, tokens, mask, readout, config=cfg, neuron_replacement=neuron_ref,
                            ig_steps=16)
    for layer in range(cfg.n_layers):
        all_neurons = neuron_edit_scores(model.params, prefix, layer, scale=np.zeros((1, cfg.d_ff)),
                                         add=neuron_ref[layer][None], readout=readout, config=cfg)[0]
        all_heads = head_edit_scores(model.params, prefix, layer, scale=np.zeros((1, cfg.n_heads)),
                                     readout=readout, config=cfg, positions="all")[0]
        clean = np.einsum("bd,bd->b", prefix.final, readout)
        for total, joint in ((ig.neurons[layer].sum(0), all_neurons), (ig.heads[layer].sum(0), all_heads)):
            np.testing.assert_allclose(total, joint - clean, rtol=0, atol=0.005 * max(1.0, np.abs(joint - clean).max()))
