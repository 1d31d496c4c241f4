"""The fast scans on real weights == brute-force forwards: the default model (SmolLM2-135M-Instruct,
two chat prompts) and Gemma-3-270M (four prompts in its turn format; post-sublayer norms, q/k norms,
local and global layers), a few components per scan. Tolerance: float32, 2e-5 relative to the
largest score. The Gemma case skips, with the pip command as the reason, without its packages."""
from __future__ import annotations

import numpy as np
import pytest

import gemma_fixtures as gemma

from emojax.method.prompts import chat, tokenize_prompts
from emojax.model.interventions import Intervention, stack_variants
from emojax.scan import (capture_prefix, causal_head_scan, causal_neuron_scan, head_ablation_same_layer,
                         suffix_scores)
from emojax.scan.brute import brute_head_same_layer, brute_head_scan, brute_neuron_scan, intervention_scores

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
RTOL = 2e-5


def assert_close(fast, slow, scale):
    np.testing.assert_allclose(fast, slow, rtol=0, atol=RTOL * max(1.0, scale))


PROMPTS = {"smollm2": [chat("Keep the reply short.", "The bus was late again."),
                        chat("Keep the reply to at most two sentences.", "My friend called me after work today.")],
           "gemma": [chat("Keep the reply short.", "The bus was late again."),
                     chat("Keep the reply to at most two sentences.", "My friend called me after work today."),
                     chat("Answer in one sentence.", "I found an old letter from my grandmother."),
                     chat("Keep the reply short.", "The neighbours are having a party until three in the morning.")]}


@pytest.fixture(scope="module", params=sorted(PROMPTS))
def setup(request):
    if request.param == "gemma":
        model = gemma.loaded_gemma()
    else:
        model = request.getfixturevalue("default_model")
    prompts = PROMPTS[request.param]
    batch = tokenize_prompts(model.tokenizer, prompts)
    assert batch.mask[:, 0].sum() < len(prompts)  # the rows differ in length: left padding is exercised
    prefix = capture_prefix(model.params, batch.tokens, batch.mask, config=model.config, keep_sequence=True)
    rng = np.random.default_rng(0)
    readout = (rng.normal(size=(len(prompts), model.config.d_model)) / np.sqrt(model.config.d_model)).astype(np.float32)
    return model, batch.tokens, batch.mask, prefix, readout


def test_suffix_passes(setup):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    sites = [(0, 0), (cfg.n_layers // 2, 1), (cfg.n_layers - 1, 1)]
    deltas = np.random.default_rng(1).normal(size=(len(sites), tokens.shape[0], cfg.d_model)).astype(np.float32)
    fast = suffix_scores(model.params, prefix, deltas, layer=[l for l, _ in sites], sublayer=[s for _, s in sites],
                         readout=readout, config=cfg)
    ivs = []
    for (layer, site), delta in zip(sites, deltas):
        add = np.zeros((cfg.n_layers, tokens.shape[0], 2, cfg.d_model), np.float32)
        add[layer, :, site] = delta
        ivs.append(Intervention.identity(cfg).with_where(resid="last").replace(resid_add=add))
    slow = intervention_scores(model.params, tokens, mask, stack_variants(ivs), readout=readout, config=cfg)
    assert_close(fast, slow, np.abs(slow).max())


def test_head_scans(setup):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    for positions, layers in (("last", [cfg.n_layers - 2]), ("all", [cfg.n_layers // 3])):
        fast = causal_head_scan(model.params, prefix, readout, config=cfg, positions=positions, layers=layers)
        slow = brute_head_scan(model.params, tokens, mask, readout=readout, config=cfg, positions=positions,
                               layers=layers)
        assert_close(fast.effect, slow.effect, np.abs(slow.base).max())


def test_same_layer_head_importance(setup):
    model, tokens, mask, prefix, _ = setup
    cfg = model.config
    directions = np.random.default_rng(2).normal(size=(cfg.n_layers, cfg.d_model)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    layers = [cfg.n_layers // 6, (3 * cfg.n_layers) // 4]
    imp, base = head_ablation_same_layer(model.params, prefix.z, prefix.resid_mid, directions, config=cfg)
    want_imp, want_base = brute_head_same_layer(model.params, tokens, mask, directions=directions, config=cfg,
                                                layers=layers)
    scale = np.abs(want_base).max()
    assert_close(base, want_base, scale)
    assert_close(imp[:, layers], want_imp, scale)


def test_neuron_scan(setup):
    model, tokens, mask, prefix, readout = setup
    cfg = model.config
    layers, neurons = [0, cfg.n_layers - 1], [0, 700, cfg.d_ff - 1]
    fast = causal_neuron_scan(model.params, prefix, readout, config=cfg, layers=layers, neurons=neurons)
    slow = brute_neuron_scan(model.params, tokens, mask, readout=readout, config=cfg, layers=layers,
                             neurons=neurons)
    assert_close(fast.effect, slow.effect, np.abs(slow.base).max())
