"""Every exact scan == its brute-force definition on every family (emojax/model/block.py's options):
Llama, Qwen2 (biases), Qwen3 (q/k norms), Mistral (a window on every layer), Gemma 2 (post-sublayer
norms, soft-caps, alternating windows) and Gemma 3 (q/k norms, post norms, local and global layers with
two RoPE bases). Prompts are left-padded and longer than the window of 4, so windows cut in.

Under Gemma's post-sublayer norms the closed forms (same-layer head score, analytic neuron
contributions, the validation's local neuron read-out) and the residual deltas of head and neuron edits
are taken through the norms; these tests hold them to one full forward per variant.
Tolerance: float32, 2e-5 relative to the largest score (3e-5 where scores pass through Gemma's norms).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import POST_NORM_CONFIGS

from emojax.model import block
from emojax.model.forward import forward
from emojax.model.interventions import Intervention, stack_variants
from emojax.model.taps import TapSpec
from emojax.scan import (attribution_scores, capture_prefix, causal_head_scan, causal_neuron_scan,
                         head_ablation_same_layer, head_edit_scores, head_set_ablation_same_layer,
                         neuron_contributions, neuron_edit_scores, neuron_stats, suffix_intervention_scores,
                         suffix_scores, sublayer_influence)
from emojax.scan.brute import (brute_head_same_layer, brute_head_scan, brute_neuron_contributions, brute_neuron_scan,
                               brute_sublayer_scan, intervention_scores)
from emojax.scan.neurons import neuron_set_local_changes

FAMILIES = ("llama_gqa_tied", "qwen2_bias", "qwen3_qk_norm", "mistral_window", "gemma2_softcap",
            "gemma3_local_global")
NEURONS = (0, 7, 50, 111)


def tolerance(model) -> float:
    return 3e-5 if model.name in POST_NORM_CONFIGS else 2e-5


def assert_close(model, fast, slow, scale=None):
    scale = np.abs(slow).max() if scale is None else scale
    np.testing.assert_allclose(fast, slow, rtol=0, atol=tolerance(model) * max(1.0, scale))


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, tiny_model):
    model = tiny_model(request.param)
    cfg = model.config
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (3, 9))
    mask = np.ones(tokens.shape, bool)
    mask[1, :2] = False
    mask[2, :4] = False
    prefix = capture_prefix(model.params, tokens, mask, config=cfg, keep_sequence=True)
    readout = rng.normal(size=(tokens.shape[0], cfg.d_model)).astype(np.float32)
    directions = rng.normal(size=(tokens.shape[0], cfg.n_layers, cfg.d_model)).astype(np.float32)
    return model, tokens, mask, prefix, readout, directions


def test_the_family_uses_its_options(setup):
    """Guard against a vacuous pass: the windows cut in on these prompts and post norms are present."""
    model, tokens, *_ = setup
    cfg = model.config
    if cfg.sliding_window is not None:
        assert tokens.shape[1] > cfg.sliding_window
    assert cfg.post_norms == (model.name in POST_NORM_CONFIGS)


def test_suffix_passes_equal_residual_edits_at_every_site(setup):
    model, tokens, mask, prefix, readout, _ = setup
    cfg, b = model.config, tokens.shape[0]
    deltas = np.random.default_rng(2).normal(size=(2, b, cfg.d_model)).astype(np.float32)
    for layer in range(cfg.n_layers):
        for site, sub in enumerate(("attn", "mlp")):
            fast = suffix_scores(model.params, prefix, deltas, layer=layer, sublayer=sub, readout=readout, config=cfg)
            ivs = []
            for delta in deltas:
                add = np.zeros((cfg.n_layers, b, 2, cfg.d_model), np.float32)
                add[layer, :, site] = delta
                ivs.append(Intervention.identity(cfg).with_where(resid="last").replace(resid_add=jnp.asarray(add)))
            slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
            assert_close(model, fast, slow)


def test_multi_layer_last_position_interventions(setup):
    model, tokens, mask, prefix, readout, _ = setup
    cfg = model.config
    iv = Intervention.identity(cfg).with_where(neuron="last", head="last", resid="last")
    ivs = stack_variants([iv.zero_heads([(0, 1), (cfg.n_layers - 1, 0)]).zero_neurons([(1, 3), (0, 5)]),
                          iv.add_resid(0, 1, jnp.ones(cfg.d_model), rms_scaled=True)])
    fast = suffix_intervention_scores(model.params, prefix, ivs, readout=readout, config=cfg)
    slow = intervention_scores(model.params, tokens, mask, ivs, readout=readout, config=cfg)
    assert_close(model, fast, slow)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_causal_head_scan_equals_one_forward_per_head(setup, positions):
    model, tokens, mask, prefix, readout, _ = setup
    fast = causal_head_scan(model.params, prefix, readout, config=model.config, positions=positions)
    slow = brute_head_scan(model.params, tokens, mask, readout=readout, config=model.config, positions=positions)
    assert_close(model, fast.base, slow.base)
    assert_close(model, fast.effect, slow.effect, np.abs(slow.base).max())
    assert np.abs(slow.effect).max() > 1e-2


@pytest.mark.parametrize("positions", ["last", "all"])
def test_head_edits_with_adds_equal_forwards(setup, positions):
    model, tokens, mask, prefix, readout, _ = setup
    cfg = model.config
    rng = np.random.default_rng(7)
    scale = rng.random((2, cfg.n_heads)).astype(np.float32)
    add = rng.normal(size=(2, cfg.n_heads, cfg.head_dim)).astype(np.float32)
    layer = cfg.n_layers - 1  # a full-attention layer of Gemma 2 and 3
    fast = head_edit_scores(model.params, prefix, layer, scale=scale, add=add, readout=readout, config=cfg,
                            positions=positions)
    ivs = []
    for s in range(2):
        iv = Intervention.identity(cfg).with_where(head=positions)
        ivs.append(iv.replace(head_scale=iv.head_scale.at[layer].set(scale[s]),
                              head_add=iv.head_add.at[layer].set(add[s])))
    slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
    assert_close(model, fast, slow)


def test_same_layer_head_closed_form_equals_ablation_runs(setup):
    model, tokens, mask, prefix, _, directions = setup
    imp, base = head_ablation_same_layer(model.params, prefix.z, prefix.resid_mid, directions, config=model.config)
    want_imp, want_base = brute_head_same_layer(model.params, tokens, mask, directions=directions,
                                                config=model.config)
    scale = np.abs(want_base).max()
    assert_close(model, base, want_base, scale)
    assert_close(model, imp, want_imp, scale)
    assert np.abs(want_imp).max() > 1e-2


def test_same_layer_head_sets_equal_ablation_runs(setup):
    """Head sets with a mean replacement: under post norms their changes are summed inside the norm."""
    model, tokens, mask, prefix, _, directions = setup
    cfg = model.config
    rng = np.random.default_rng(5)
    sets = (rng.random((2, cfg.n_layers, cfg.n_heads)) < 0.5).astype(np.float32)
    mean = rng.normal(size=(cfg.n_layers, cfg.q_dim)).astype(np.float32)
    got, _ = head_set_ablation_same_layer(model.params, prefix.z, prefix.resid_mid, directions, sets, config=cfg,
                                          replacement=mean)
    gain = model.params["layers"]["mlp_norm"]
    mean_heads = mean.reshape(cfg.n_layers, cfg.n_heads, cfg.head_dim)
    for s in range(len(sets)):
        for layer in (0, cfg.n_layers - 2, cfg.n_layers - 1):  # a set lives in one layer, read at that layer
            iv = Intervention.identity(cfg)
            iv = iv.replace(head_scale=iv.head_scale.at[layer].set(1.0 - sets[s, layer]),
                            head_add=iv.head_add.at[layer].set(sets[s, layer][:, None] * mean_heads[layer]))
            mid = forward(model.params, jnp.asarray(tokens), config=cfg, mask=jnp.asarray(mask), iv=iv,
                          logits="none", taps=TapSpec(points=("resid_mid",), at="last")).taps["resid_mid"]
            want = np.einsum("bd,bd->b", block.norm(mid[:, layer], gain[layer], cfg), directions[:, layer])
            assert_close(model, got[s, :, layer], want)


def test_neuron_contributions_equal_ablation_runs(setup):
    model, tokens, mask, prefix, _, directions = setup
    cfg = model.config
    c = neuron_contributions(model.params, prefix.g, directions, config=cfg)
    want = brute_neuron_contributions(model.params, tokens, mask, directions=directions, config=cfg,
                                      neurons=NEURONS)
    assert_close(model, c[:, :, list(NEURONS)], want)
    assert np.abs(want).max() > 1e-3
    stats = neuron_stats(model.params, prefix.g, np.array([0, 1, 0]), directions[:2], config=cfg)
    per_row = neuron_contributions(model.params, prefix.g, directions[:2][[0, 1, 0]], config=cfg)
    np.testing.assert_allclose(stats["C_mean"][0], per_row[[0, 2]].mean(0), rtol=1e-5, atol=1e-6)
    if not cfg.post_norms:  # the linear decomposition: a layer's contributions add up to its projection
        mlp_out = forward(model.params, jnp.asarray(tokens), config=cfg, mask=jnp.asarray(mask), logits="none",
                          taps=TapSpec(points=("mlp_out",), at="last")).taps["mlp_out"]
        total = np.einsum("bld,bld->bl", mlp_out, directions)
        np.testing.assert_allclose(c.sum(-1), total, rtol=1e-4, atol=1e-4 * np.abs(total).max())


def test_contributions_under_post_norms_need_the_config(setup):
    model, _, _, prefix, _, directions = setup
    if not model.config.post_norms:
        pytest.skip("linear branch: no config needed")
    with pytest.raises(ValueError, match="post-sublayer norms"):
        neuron_contributions(model.params, prefix.g, directions)


def test_neuron_set_local_changes_equal_forwards(setup):
    """The validation's local read-out <x_{l+1}[t*], v> under ablation and enhancement of neuron sets."""
    model, tokens, mask, prefix, _, directions = setup
    cfg = model.config
    rng = np.random.default_rng(8)
    layer = 1
    masks = (rng.random((3, cfg.d_ff)) < 0.1).astype(np.float32)
    delta = rng.normal(size=cfg.d_ff).astype(np.float32)
    v = directions[0, layer]
    for scale, add in ((1.0 - masks, None), (np.ones_like(masks), 2.0 * masks * delta)):
        got = neuron_set_local_changes(model.params, prefix.g[:, layer], layer, v, scale=scale, add=add, config=cfg)
        ivs = []
        for s in range(len(masks)):
            iv = Intervention.identity(cfg, resid_where="none", neuron_where="last", head_where="none")
            ivs.append(iv.replace(neuron_scale=iv.neuron_scale.at[layer].set(scale[s]),
                                  neuron_add=iv.neuron_add if add is None else iv.neuron_add.at[layer].set(add[s])))
        post = [forward(model.params, jnp.asarray(tokens), config=cfg, mask=jnp.asarray(mask), iv=iv, logits="none",
                        taps=TapSpec(points=("resid_post",), at="last")).taps["resid_post"][:, layer] @ v
                for iv in ivs]
        want = np.stack(post) - np.asarray(prefix.resid_post[:, layer]) @ v
        assert_close(model, got, want)


def test_causal_neuron_scan_equals_one_forward_per_neuron(setup):
    model, tokens, mask, prefix, readout, _ = setup
    cfg = model.config
    mean = np.asarray(prefix.g).mean(0)
    for rep in (None, mean):
        fast = causal_neuron_scan(model.params, prefix, readout, config=cfg, neurons=NEURONS, replacement=rep)
        slow = brute_neuron_scan(model.params, tokens, mask, readout=readout, config=cfg, neurons=NEURONS,
                                 replacement=rep)
        assert_close(model, fast.effect, slow.effect, np.abs(slow.base).max())
    assert np.abs(slow.effect).max() > 1e-3


@pytest.mark.parametrize("positions", ["last", "all"])
def test_neuron_edits_equal_forwards(setup, positions):
    model, tokens, mask, prefix, readout, _ = setup
    cfg = model.config
    rng = np.random.default_rng(3)
    scale = (rng.random((2, cfg.d_ff)) > 0.2).astype(np.float32)
    add = rng.normal(size=(2, cfg.d_ff)).astype(np.float32) * 0.3
    layer = 2
    fast = neuron_edit_scores(model.params, prefix, layer, scale=scale, add=add, readout=readout, config=cfg,
                              positions=positions)
    ivs = []
    for s in range(2):
        iv = Intervention.identity(cfg).with_where(neuron=positions)
        ivs.append(iv.replace(neuron_scale=iv.neuron_scale.at[layer].set(scale[s]),
                              neuron_add=iv.neuron_add.at[layer].set(add[s])))
    slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
    assert_close(model, fast, slow)


def test_sublayer_influence_equals_injection_runs(setup):
    model, tokens, mask, prefix, readout, _ = setup
    cfg = model.config
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(2, cfg.n_layers, cfg.d_model)).astype(np.float32)
    sigma = rng.uniform(0.5, 2.0, size=(2, cfg.n_layers)).astype(np.float32)
    got = sublayer_influence(model.params, prefix, directions, sigma, (0.3,), readout, config=cfg)
    want = brute_sublayer_scan(model.params, tokens, mask, directions=directions, sigma=sigma, alphas=(0.3,),
                               readout=readout, config=cfg)
    assert_close(model, got.perturbed, want)


def test_attribution_equals_finite_differences(setup):
    """The gradients go through every option of the block (norms, soft-caps, windows)."""
    model, tokens, mask, _, readout, _ = setup
    cfg = model.config
    eps = 1e-2
    attr = attribution_scores(model.params, tokens, mask, readout, config=cfg)
    sites_n, sites_h = [(0, 4), (cfg.n_layers - 1, 50)], [(1, 1), (cfg.n_layers - 1, 0)]
    identity = Intervention.identity(cfg).with_where(neuron="last", head="all")
    ivs = []
    for step in (eps, -eps):  # toward zero by a fraction step
        for layer, j in sites_n:
            ivs.append(identity.replace(neuron_scale=identity.neuron_scale.at[layer, j].set(1 - step)))
        for layer, h in sites_h:
            ivs.append(identity.replace(head_scale=identity.head_scale.at[layer, h].set(1 - step)))
    scores = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
    n = len(sites_n) + len(sites_h)
    central = (scores[:n] - scores[n:]) / (2 * eps)
    want = np.stack([attr.neurons[l, j] for l, j in sites_n] + [attr.heads[l, h] for l, h in sites_h])
    np.testing.assert_allclose(want, central, rtol=5e-3, atol=5e-3 * np.abs(central).max())
