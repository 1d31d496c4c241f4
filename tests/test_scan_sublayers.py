"""Sublayer influence (S6d) and recompute-from-layer == full forwards with the same edits.

Tolerance: float32, 2e-5 relative to the largest score.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emojax.model.interventions import Intervention, stack_variants
from emojax.scan import capture_prefix, recompute_scores, sublayer_influence
from emojax.scan.brute import brute_sublayer_scan, intervention_scores

RTOL = 2e-5
ALPHAS = (0.1, 0.7)


def assert_close(fast, slow, scale):
    np.testing.assert_allclose(fast, slow, rtol=0, atol=RTOL * max(1.0, scale))


@pytest.fixture(scope="module")
def setup(tiny_model):
    model = tiny_model("llama_mha_untied")
    cfg = model.config
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (3, 6))
    mask = np.ones(tokens.shape, bool)
    mask[2, :3] = False
    prefix = capture_prefix(model.params, tokens, mask, config=cfg, keep_sequence=True)
    readout = rng.normal(size=(tokens.shape[0], cfg.d_model)).astype(np.float32)
    return model, tokens, mask, prefix, readout


@pytest.mark.parametrize("per_row", [False, True])
def test_sublayer_influence_equals_injection_runs(setup, per_row):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    rng = np.random.default_rng(1)
    shape = (tokens.shape[0], 2, cfg.n_layers, cfg.d_model) if per_row else (2, cfg.n_layers, cfg.d_model)
    directions = rng.normal(size=shape).astype(np.float32)
    sigma = rng.uniform(0.5, 2.0, size=(2, cfg.n_layers)).astype(np.float32)
    got = sublayer_influence(model.params, prefix, directions, sigma, ALPHAS, readout, config=cfg)
    want = brute_sublayer_scan(model.params, tokens, mask, directions=directions, sigma=sigma, alphas=ALPHAS,
                               readout=readout, config=cfg)
    scale = np.abs(want).max()
    assert got.perturbed.shape == (2, cfg.n_layers, len(ALPHAS), tokens.shape[0])
    assert_close(got.perturbed, want, scale)
    base = intervention_scores(model.params, tokens, mask, None, readout=readout, config=cfg)
    dose = np.asarray(ALPHAS)[None, None, :, None] * sigma[:, :, None, None]
    assert_close(got.influence * dose, want - base, scale)


def test_recompute_with_a_constant_delta_equals_resid_add_everywhere(setup):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    deltas = np.random.default_rng(2).normal(size=(3, cfg.d_model)).astype(np.float32)
    for layer in range(cfg.n_layers):
        for site, sub in enumerate(("attn", "mlp")):
            fast = recompute_scores(model.params, prefix, deltas, layer=layer, sublayer=sub, readout=readout,
                                    config=cfg)
            ivs = [Intervention.identity(cfg).add_resid(layer, site, jnp.asarray(d)) for d in deltas]
            slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
            assert_close(fast, slow, np.abs(slow).max())


def test_recompute_matches_per_position_deltas(setup):
    """A per-position delta that is non-zero at t* alone equals the last-position residual edit."""
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    b, t = tokens.shape
    delta = np.zeros((1, b, t, cfg.d_model), np.float32)
    delta[0, :, t - 1] = np.random.default_rng(3).normal(size=(b, cfg.d_model))
    at_last = recompute_scores(model.params, prefix, delta, layer=0, sublayer="mlp", readout=readout, config=cfg)
    iv = Intervention.identity(cfg).with_where(resid="last")
    iv = iv.replace(resid_add=jnp.zeros((cfg.n_layers, b, 2, cfg.d_model)).at[0, :, 1].set(delta[0, :, t - 1]))
    slow = intervention_scores(model.params, tokens, mask, stack_variants([iv]), readout=readout, config=cfg)
    assert_close(at_last, slow, np.abs(slow).max())
