"""The causal stage (§14.2, §14.4): its per-prompt scores == one brute-force forward per ablated component
(tiny model; default model marked slow), attribution and analytic scores are oriented like them, the
agreement statistics follow their definitions, and the stage writes its outputs or skips.
Tolerance: float32, 2e-5 (tiny) and 2e-4 (default model) relative to the largest score.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import spearmanr

from emojax.data import EMOTIONS, items, load_dataset
from emojax.method.directions import unit
from emojax.method.prompts import emotion_messages, tokenize_prompts
from emojax.runs import read_json, read_npz
from emojax.scan import attribution_scores, head_ablation_same_layer, neuron_contributions
from emojax.scan.brute import brute_head_scan, brute_neuron_scan
from emojax.stages import causal
from component_fixtures import tiny_context
from stage_fixtures import split, tiny_loaded_model


def assert_close(got, want, rel):
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * max(1.0, float(np.abs(want).max())))


def random_geometry(config, seed=0):
    rng = np.random.default_rng(seed)
    shape = (6, config.n_layers, config.d_model)
    return {"dirs_attn": unit(rng.normal(size=shape)).astype(np.float32),
            "dirs_mlp": unit(rng.normal(size=shape)).astype(np.float32),
            "v_ref": unit(rng.normal(size=(6, config.d_model))).astype(np.float32)}


def check_prompt_scores(model, chosen, layers, rel, neurons=None):
    cfg, params = model.config, model.params
    batch = tokenize_prompts(model.tokenizer, [emotion_messages(i) for i in chosen])
    emotion = np.array([EMOTIONS.index(i.emotion) for i in chosen])
    geometry = random_geometry(cfg)
    got = causal.prompt_scores(params, batch.tokens, batch.mask, emotion, geometry, layers, cfg)
    readout = geometry["v_ref"][emotion]
    neuron_ids = range(cfg.d_ff) if neurons is None else neurons
    want_neurons = brute_neuron_scan(params, batch.tokens, batch.mask, readout=readout, config=cfg, layers=layers,
                                     neurons=list(neuron_ids)).effect
    want_heads = brute_head_scan(params, batch.tokens, batch.mask, readout=readout, config=cfg, positions="all",
                                 layers=layers).effect
    assert_close(got["neuron_causal"][:, layers][:, :, list(neuron_ids)], -np.moveaxis(want_neurons, -1, 0), rel)
    assert_close(got["head_causal"][:, layers], -np.moveaxis(want_heads, -1, 0), rel)
    others = [l for l in range(cfg.n_layers) if l not in layers]
    assert np.isnan(got["neuron_causal"][:, others]).all() and np.isnan(got["head_causal"][:, others]).all()
    gradient = attribution_scores(params, batch.tokens, batch.mask, readout, config=cfg)
    assert_close(got["neuron_gradient"], -np.moveaxis(gradient.neurons, -1, 0), 1e-6)
    assert_close(got["head_gradient"], -np.moveaxis(gradient.heads, -1, 0), 1e-6)
    # The analytic scores are the S4a/S4b per-item quantities against each prompt's own emotion.
    from emojax.scan import capture_prefix

    prefix = capture_prefix(params, batch.tokens, batch.mask, config=cfg)
    assert_close(got["neuron_analytic"], neuron_contributions(params, prefix.g, geometry["dirs_mlp"][emotion]), 1e-6)
    assert_close(got["head_analytic"], head_ablation_same_layer(params, prefix.z, prefix.resid_mid,
                                                                geometry["dirs_attn"][emotion], config=cfg)[0], 1e-6)
    return got


def test_prompt_scores_equal_one_forward_per_component():
    model = tiny_loaded_model()
    chosen = [i for i in items(split(1)) if i.valence == "neutral"][:3]
    got = check_prompt_scores(model, chosen, [0, 2], 2e-5, neurons=list(range(0, model.config.d_ff, 4)))
    assert np.abs(got["neuron_causal"][:, [0, 2]]).max() > 1e-3


def test_rank_statistics():
    a = np.array([0.5, 3.0, -1.0, 2.0, 2.0])
    b = np.array([1.0, 4.0, 0.0, 3.0, 2.5])
    assert causal.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert np.isnan(causal.spearman(a, np.ones(5)))
    assert causal.top_k_overlap(a, b, 2) == 1.0                   # {1, 3} (a tie keeps the lower id) vs {1, 3}
    assert causal.top_k_overlap(a, np.array([1.0, 4.0, 0.0, 2.0, 3.0]), 2) == 0.5   # vs {1, 4}
    assert causal.top_k_overlap(a, -a, 2) == 0.0
    means = {f"{kind}_{m}": np.zeros((6, 3, w)) for kind, w in (("neuron", 40), ("head", 4)) for m in causal.METHODS}
    ramp = np.arange(40.0)
    for m in causal.METHODS:
        means[f"neuron_{m}"][:] = ramp
        means[f"head_{m}"][:] = np.arange(4.0)
    means["neuron_gradient"][:] = -ramp
    means["neuron_causal"][:, 1] = np.nan                  # a layer outside the causal scan
    rows = causal.agreement_rows(means, layers=[0, 1])
    by = {(r["emotion"], r["kind"], r["layer"], r["pair"]): r for r in rows}
    assert by[("anger", "neuron", 0, "analytic-causal")]["spearman"] == pytest.approx(1.0)
    assert by[("anger", "neuron", 0, "analytic-gradient")]["spearman"] == pytest.approx(-1.0)
    assert by[("anger", "neuron", 0, "analytic-gradient")]["overlap"] == 0.0
    assert ("anger", "neuron", 1, "analytic-causal") not in by and ("anger", "neuron", 1, "analytic-gradient") in by
    summary = causal.agreement_summary(rows)
    assert summary["overall"]["head:causal-gradient"] == {"spearman": pytest.approx(1.0), "overlap": 1.0}


def test_stage_writes_outputs_and_skips_without_prompts(tmp_path):
    ctx = tiny_context(tmp_path, train=split(1))
    skipped = causal.run(ctx)   # the tiny preset scans 0 prompts
    assert "skipped" in skipped and not (ctx.run.path / "causal").exists()

    summary = causal.run(ctx, prompts_per_emotion=1, layers=[1, 3])
    out = ctx.run.path / "causal"
    scores, meta = read_npz(out / "causal_scores.npz")
    cfg = ctx.config
    assert scores["neuron_causal"].shape == (6, cfg.n_layers, cfg.d_ff) and scores["prompts"].tolist() == [1] * 6
    assert np.isnan(scores["neuron_causal"][:, [0, 2]]).all() and not np.isnan(scores["neuron_causal"][:, [1, 3]]).any()
    assert meta["model_hash"] == ctx.model.source_hash and scores["layers"].tolist() == [1, 3]
    with open(out / "agreement.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(causal.AGREEMENT_COLUMNS)
    assert len(rows) == 6 * 2 * 2 * len(causal.PAIRS)
    row = next(r for r in rows if r["emotion"] == "fear" and r["kind"] == "neuron" and r["layer"] == "3"
               and r["pair"] == "analytic-causal")
    fear = EMOTIONS.index("fear")
    assert float(row["spearman"]) == pytest.approx(spearmanr(scores["neuron_analytic"][fear, 3],
                                                             scores["neuron_causal"][fear, 3]).statistic, abs=1e-6)
    agreement = read_json(out / "agreement.json")
    assert set(agreement["overall"]) == {f"{k}:{a}-{b}" for k in ("neuron", "head") for a, b in causal.PAIRS}
    assert summary["agreement"] == agreement["overall"]
    for png in ("agreement_by_layer", "causal_vs_analytic"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert causal.run(ctx, prompts_per_emotion=1, layers=[1, 3]) == summary   # finished: skipped


@pytest.mark.slow
def test_default_model_prompt_scores_equal_brute_force(default_model):
    """One prompt, one deep layer, every head and a spread of neurons of the default model."""
    chosen = [i for i in items(load_dataset("bundled:train")[:1]) if i.valence == "negative"][:1]
    neurons = list(range(0, default_model.config.d_ff, 61))
    check_prompt_scores(default_model, chosen, [default_model.config.n_layers - 3], 2e-4, neurons=neurons)
