"""Head scans == their brute-force definitions through emojax.forward + Intervention.

- closed-form same-layer importance == zeroing the head at every position and reading
  N^post_l(m_l)[t*] (also for head sets and mean ablation);
- causal head scan at t* (suffix passes) and at every position (recompute) == one forward per head.
Tolerance: float32, 2e-5 relative to the largest score.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emojax.model.forward import forward, rms_norm
from emojax.model.interventions import Intervention, stack_variants
from emojax.scan import (capture_prefix, causal_head_scan, head_ablation_same_layer, head_edit_scores,
                         head_set_ablation_same_layer)
from emojax.model.taps import TapSpec
from emojax.scan.brute import brute_head_same_layer, brute_head_scan, intervention_scores

RTOL = 2e-5


def left_padded_batch(config, seed=0, batch=3, length=7):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (batch, length))
    mask = np.ones((batch, length), bool)
    mask[1, :2] = False
    mask[2, :4] = False
    return tokens, mask


def assert_close(fast, slow, scale):
    np.testing.assert_allclose(fast, slow, rtol=0, atol=RTOL * max(1.0, scale))


@pytest.fixture(scope="module")
def setup(tiny_model):
    model = tiny_model("qwen2_bias")
    cfg = model.config
    tokens, mask = left_padded_batch(cfg)
    prefix = capture_prefix(model.params, tokens, mask, config=cfg, keep_sequence=True)
    rng = np.random.default_rng(4)
    readout = rng.normal(size=(tokens.shape[0], cfg.d_model)).astype(np.float32)
    directions = rng.normal(size=(tokens.shape[0], cfg.n_layers, cfg.d_model)).astype(np.float32)
    return model, tokens, mask, prefix, readout, directions


def test_same_layer_closed_form_equals_ablation_runs(setup):
    model, tokens, mask, prefix, _, directions = setup
    imp, base = head_ablation_same_layer(model.params, prefix.z, prefix.resid_mid, directions, config=model.config)
    want_imp, want_base = brute_head_same_layer(model.params, tokens, mask, directions=directions,
                                                config=model.config)
    scale = np.abs(want_base).max()
    assert_close(base, want_base, scale)
    assert_close(imp, want_imp, scale)
    assert np.abs(want_imp).max() > 1e-2


def test_same_layer_head_sets_and_mean_ablation(setup):
    model, tokens, mask, prefix, _, directions = setup
    cfg = model.config
    rng = np.random.default_rng(5)
    sets = (rng.random((3, cfg.n_layers, cfg.n_heads)) < 0.5).astype(np.float32)
    mean = rng.normal(size=(cfg.n_layers, cfg.q_dim)).astype(np.float32)
    got, _ = head_set_ablation_same_layer(model.params, prefix.z, prefix.resid_mid, directions, sets, config=cfg,
                                          replacement=mean)
    shared_dirs = jnp.asarray(directions[0])
    gain = model.params["layers"]["mlp_norm"]
    mean_heads = mean.reshape(cfg.n_layers, cfg.n_heads, cfg.head_dim)
    for s in range(len(sets)):
        for layer in range(cfg.n_layers):  # a set lives in one layer and is read at that layer
            iv = Intervention.identity(cfg)
            iv = iv.replace(head_scale=iv.head_scale.at[layer].set(1.0 - sets[s, layer]),
                            head_add=iv.head_add.at[layer].set(sets[s, layer][:, None] * mean_heads[layer]))
            mid = forward(model.params, jnp.asarray(tokens), config=cfg, mask=jnp.asarray(mask), iv=iv,
                          logits="none", taps=TapSpec(points=("resid_mid",), at="last")).taps["resid_mid"]
            want = np.einsum("bd,bd->b", rms_norm(mid[:, layer], gain[layer], cfg.rms_eps), directions[:, layer])
            assert_close(got[s, :, layer], want, np.abs(want).max())
    # A shared direction gives the same as repeating it per row.
    got_shared, _ = head_set_ablation_same_layer(model.params, prefix.z, prefix.resid_mid, shared_dirs, sets,
                                                 config=cfg, replacement=mean)
    got_rows, _ = head_set_ablation_same_layer(model.params, prefix.z, prefix.resid_mid,
                                               np.broadcast_to(directions[:1], directions.shape), sets,
                                               config=cfg, replacement=mean)
    np.testing.assert_allclose(got_shared, got_rows, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_causal_head_scan_equals_one_forward_per_head(setup, positions):
    model, tokens, mask, prefix, readout, _ = setup
    fast = causal_head_scan(model.params, prefix, readout, config=model.config, positions=positions)
    slow = brute_head_scan(model.params, tokens, mask, readout=readout, config=model.config, positions=positions)
    scale = np.abs(slow.base).max()
    assert_close(fast.base, slow.base, scale)
    assert_close(fast.effect, slow.effect, scale)
    assert np.abs(slow.effect).max() > 1e-2


def test_causal_head_scan_with_group_mean_replacement(setup):
    model, tokens, mask, prefix, readout, _ = setup
    cfg = model.config
    rep = np.random.default_rng(6).normal(size=(tokens.shape[0], cfg.n_layers, cfg.q_dim)).astype(np.float32)
    for positions in ("last", "all"):
        fast = causal_head_scan(model.params, prefix, readout, config=cfg, positions=positions, replacement=rep,
                                layers=[1])
        slow = brute_head_scan(model.params, tokens, mask, readout=readout, config=cfg, positions=positions,
                               replacement=rep, layers=[1])
        assert_close(fast.effect, slow.effect, np.abs(slow.base).max())


def test_head_edit_scores_add_at_every_position(setup):
    model, tokens, mask, prefix, readout, _ = setup
    cfg = model.config
    rng = np.random.default_rng(7)
    scale = rng.random((2, cfg.n_heads)).astype(np.float32)
    add = rng.normal(size=(2, cfg.n_heads, cfg.head_dim)).astype(np.float32)
    layer = 1
    for positions in ("last", "all"):
        fast = head_edit_scores(model.params, prefix, layer, scale=scale, add=add, readout=readout, config=cfg,
                                positions=positions)
        ivs = []
        for s in range(2):
            iv = Intervention.identity(cfg).with_where(head=positions)
            ivs.append(iv.replace(head_scale=iv.head_scale.at[layer].set(scale[s]),
                                  head_add=iv.head_add.at[layer].set(add[s])))
        slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
        assert_close(fast, slow, np.abs(slow).max())


def test_all_positions_needs_the_sequence(setup):
    model, tokens, mask, _, readout, _ = setup
    short = capture_prefix(model.params, tokens, mask, config=model.config)
    with pytest.raises(ValueError, match="keep_sequence=True"):
        causal_head_scan(model.params, short, readout, config=model.config, positions="all")
