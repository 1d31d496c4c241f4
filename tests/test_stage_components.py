"""The components stage (S4a, S4b) against the method's definitions.

Tiny random model (the stage end to end): neuron statistics == a numpy transcription of S4a, and the
contributions of a layer sum to <mlp_out[t*], v^{mlp,l}_e> taken from the forward pass; head
statistics == brute-force zeroing of each head at every position through emojax.forward; the official
CSV layout; the long-tail summary; resumption. Default model (a few prompts): the same identities.
Tolerances: float32, 1e-5 (tiny) and 1e-4 (default model) relative to the largest value compared.
"""
from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.data import EMOTIONS, items, load_dataset
from emojax.method import directions as dirs_lib
from emojax.method.prompts import emotion_messages, tokenize_prompts
from emojax.model.forward import forward, rms_norm
from emojax.model.interventions import Intervention, stack_variants
from emojax.model.taps import TapSpec
from emojax.runs import InputError, read_json, read_npz, write_json
from emojax.scan.brute import brute_head_same_layer
from emojax.stages import capture, components
from component_fixtures import tiny_context
from stage_fixtures import split


def assert_close(got, want, rel):
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * max(1.0, float(np.abs(want).max())))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A tiny run with the components stage finished: (ctx, summary, captured prompt batch)."""
    ctx = tiny_context(tmp_path_factory.mktemp("components"), train=split(1))
    summary = components.run(ctx)
    table = read_json(ctx.run.path / "capture" / "items.json")
    by_key = {i.key: i for i in items(ctx.train)}
    batch = tokenize_prompts(ctx.model.tokenizer, [emotion_messages(by_key[k]) for k in table["keys"]])
    return ctx, summary, batch, np.asarray(table["emotion"])


def test_neuron_stats_follow_s4a_and_sum_to_the_mlp_output(done):
    ctx, summary, batch, emotion = done
    stats, meta = read_npz(ctx.run.path / "components" / "neuron_stats.npz")
    directions, _ = read_npz(ctx.run.path / "directions" / "directions.npz")
    taps = forward(ctx.model.params, batch.tokens, config=ctx.config, mask=batch.mask, logits="none",
                   taps=TapSpec(points=("g", "mlp_out"), at="last")).taps
    g, mlp_out = np.asarray(taps["g"], np.float64), np.asarray(taps["mlp_out"], np.float64)
    w_down = np.asarray(ctx.model.params["layers"]["w_down"], np.float64)
    for e in range(6):
        v = directions["dirs_mlp"][e].astype(np.float64)  # [L, D]
        beta = np.einsum("lfd,ld->lf", w_down, v)
        c = g[emotion == e] * beta
        want = {"C_mean": c.mean(0), "C_pos": np.maximum(c, 0).mean(0), "C_neg": np.maximum(-c, 0).mean(0),
                "beta": beta, "H_mean": g[emotion == e].mean(0)}
        for name, value in want.items():
            assert_close(stats[name][e], value, 1e-5)
        projection = np.einsum("nld,ld->nl", mlp_out[emotion == e], v).mean(0)
        assert_close(stats["C_mean"][e].sum(-1), projection, 1e-5)
        np.testing.assert_array_equal(stats["order"][e], np.argsort(-stats["C_mean"][e], axis=-1, kind="stable"))
    assert stats["count"].tolist() == np.bincount(emotion, minlength=6).tolist() == list(summary["samples"].values())
    assert meta["model_hash"] == ctx.model.source_hash and meta["rule"] == "accepted"


def test_head_stats_equal_brute_force_zeroing(done):
    ctx, _, batch, emotion = done
    stats, _ = read_npz(ctx.run.path / "components" / "head_stats.npz")
    directions, _ = read_npz(ctx.run.path / "directions" / "directions.npz")
    importance, base = brute_head_same_layer(ctx.model.params, batch.tokens, batch.mask,
                                             directions=directions["dirs_attn"][emotion], config=ctx.config)
    for e in range(6):
        rows = emotion == e
        assert_close(stats["mean"][e], importance[rows].mean(0), 1e-5)
        assert_close(stats["std"][e], importance[rows].std(0), 1e-5)
        assert_close(stats["baseline_mean"][e], np.broadcast_to(base[rows].mean(0)[:, None], stats["mean"][e].shape),
                     1e-5)
        assert (stats["count"][e] == rows.sum()).all()
    assert np.abs(stats["mean"]).max() > 1e-2  # the comparison is not between zeros


def test_official_csv_layout_long_tail_and_plots(done):
    ctx, summary, _, _ = done
    out = ctx.run.path / "components"
    stats, _ = read_npz(out / "head_stats.npz")
    L, H = ctx.config.n_layers, ctx.config.n_heads
    for e, emotion in enumerate(EMOTIONS):
        with open(out / f"head_importance_{emotion}.csv") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["layer", "head", "mean_importance", "std_importance", "samples", "baseline_mean"]
        assert [(int(r["layer"]), int(r["head"])) for r in rows] == [(l, h) for l in range(L) for h in range(H)]
        np.testing.assert_allclose([float(r["mean_importance"]) for r in rows], stats["mean"][e].ravel(), rtol=1e-6)
        assert {int(r["samples"]) for r in rows} == {summary["samples"][emotion]}
    tail = json.loads((out / "long_tail.json").read_text())
    neurons, _ = read_npz(out / "neuron_stats.npz")
    for e, emotion in enumerate(EMOTIONS):
        positive = np.sort(np.maximum(neurons["C_mean"][e].ravel(), 0))[::-1]
        want = int(np.searchsorted(np.cumsum(positive) / positive.sum(), 0.8 - 1e-12) + 1)
        assert tail["neurons"][emotion]["pooled"]["k_for_share"]["0.8"] == want
        assert summary["neurons_for_80pct_pooled"][emotion] == want
        assert tail["heads"][emotion]["pooled"]["components"] == L * H
    for png in ("long_tail", "head_importance"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_long_tail_shares():
    scores = np.array([[4.0, -1.0, 1.0, 0.0, 3.0, 2.0]])
    share = components.cumulative_share(scores)
    np.testing.assert_allclose(share[0], [0.4, 0.7, 0.9, 1.0, 1.0, 1.0])
    assert components.components_for_share(share, 0.7)[0] == 2
    assert components.components_for_share(share, 0.75)[0] == 3
    assert np.isnan(components.cumulative_share(np.array([[-1.0, 0.0]]))).all()
    tail = components.long_tail(np.array([[4.0, -1.0, 1.0, 0.0, 3.0, 2.0], [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]]),
                                ks=(1, 2))
    assert tail["within_layer"]["share_top_k"] == {"1": 0.4, "2": 0.7}     # the all-negative layer is skipped
    assert tail["pooled"]["k_for_share"]["0.5"] == 2 and tail["pooled"]["components"] == 12


def test_finished_stage_is_skipped_and_an_emotion_without_items_is_refused(done):
    ctx, summary, _, _ = done
    before = (ctx.run.path / "components" / "done.json").read_text()
    assert components.run(ctx) == summary
    assert (ctx.run.path / "components" / "done.json").read_text() == before
    path = ctx.run.path / capture.STAGE / "items.json"
    table = read_json(path)
    write_json(path, {**table, "emotion": [0 if e == EMOTIONS.index("fear") else e for e in table["emotion"]]})
    try:
        with pytest.raises(InputError, match="no item of fear"):
            components.run(ctx)
    finally:
        write_json(path, table)


def test_default_model_head_and_neuron_identities(default_model):
    """One complete group (six emotion prompts) of the default model, with its own group-centred
    directions: the stage's head importance == zeroing the head at every position through the forward
    pass, for a few heads; the neuron contributions of a layer sum to <mlp_out[t*], v^{mlp,l}>."""
    params, cfg = default_model.params, default_model.config
    group = [i for i in items(load_dataset("bundled:train")[:1]) if i.valence == "negative"]
    batch = tokenize_prompts(default_model.tokenizer, [emotion_messages(i) for i in group])
    taps = TapSpec(points=("resid_mid", "resid_post", "z", "g", "mlp_out"), at="last")
    acts = {name: np.asarray(value) for name, value in forward(params, batch.tokens, config=cfg, mask=batch.mask,
                                                               logits="none", taps=taps).taps.items()}
    emotion = np.arange(6)
    groups = dirs_lib.Groups(emotion, np.zeros(6, int))
    dirs_attn = dirs_lib.emotion_directions(acts["resid_mid"], groups)
    dirs_mlp = dirs_lib.emotion_directions(acts["resid_post"], groups)

    heads = components.head_statistics(params, acts["z"], acts["resid_mid"], emotion, dirs_attn, cfg)
    sites = [(0, 0), (cfg.n_layers // 2, 4), (cfg.n_layers - 1, cfg.n_heads - 1)]
    ivs = stack_variants([Intervention.identity(cfg)] + [Intervention.identity(cfg).zero_heads([s]) for s in sites])
    mids = jax.vmap(lambda iv: forward(params, batch.tokens, config=cfg, mask=batch.mask, iv=iv, logits="none",
                                       taps=TapSpec(points=("resid_mid",), at="last")).taps["resid_mid"])(ivs)
    gain = params["layers"]["mlp_norm"]
    scores = np.asarray(jnp.einsum("vbld,bld->vbl", rms_norm(mids, gain, cfg.rms_eps), jnp.asarray(dirs_attn)))
    for i, (layer, head) in enumerate(sites):
        want = scores[0, :, layer] - scores[i + 1, :, layer]   # one item per emotion
        assert_close(heads["mean"][:, layer, head], want, 1e-4)
        assert_close(heads["baseline_mean"][:, layer, head], scores[0, :, layer], 1e-4)

    neurons = components.neuron_statistics(params, acts["g"], emotion, dirs_mlp)
    assert_close(neurons["C_mean"].sum(-1), np.einsum("eld,eld->el", acts["mlp_out"], dirs_mlp), 1e-4)
