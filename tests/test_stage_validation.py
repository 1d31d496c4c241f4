"""The validation stage (§14.1): every read-out of every sweep == the same edit made through
emojax.forward with an Intervention (tiny model; default model marked slow), the random controls
follow their definition, and the stage writes its table and plots.
Tolerance: float32, 2e-5 (tiny) and 2e-4 (default model) relative to the largest score.
"""
from __future__ import annotations

import csv
import functools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.data import EMOTIONS, items, load_dataset
from emojax.method.prompts import emotion_messages, neutral_messages, tokenize_prompts
from emojax.model import block
from emojax.model.forward import forward
from emojax.model.interventions import Intervention, stack_variants
from emojax.model.taps import TapSpec
from emojax.runs import InputError, read_npz
from emojax.scan import capture_prefix
from emojax.stages import components, validation
from component_fixtures import tiny_context
from stage_fixtures import TINY_GEMMA_CONFIG, split, tiny_loaded_model

TAPS = TapSpec(points=("resid_mid", "resid_post", "final"), at="last")
LAMBDAS = (1.0, 2.0)   # a short lambda grid keeps the stage test fast


def edit_interventions(config, kind, layer, masks, lam, delta):
    """The edit of each mask as an Intervention: ablation (lam None) or lam * Delta added."""
    ivs = []
    for mask in masks:
        if kind == "neuron":
            iv = Intervention.identity(config, neuron_where="last")
            if lam is None:
                iv = iv.replace(neuron_scale=iv.neuron_scale.at[layer].set(1.0 - mask))
            else:
                iv = iv.replace(neuron_add=iv.neuron_add.at[layer].set(lam * mask * delta))
        else:
            iv = Intervention.identity(config, head_where="all")
            if lam is None:
                iv = iv.replace(head_scale=iv.head_scale.at[layer].set(1.0 - mask))
            else:
                per_head = delta.reshape(config.n_heads, config.head_dim)
                iv = iv.replace(head_add=iv.head_add.at[layer].set(lam * mask[:, None] * per_head))
        ivs.append(iv)
    return stack_variants(ivs)


@functools.partial(jax.jit, static_argnames="config")
def forward_variants(params, tokens, mask, ivs, *, config):
    return jax.vmap(lambda iv: forward(params, tokens, config=config, mask=mask, iv=iv, logits="none",
                                       taps=TAPS).taps)(ivs)


def brute_changes(params, config, tokens, mask, ivs, unit, kind):
    """(local, global) score changes [S, n] from full forwards with the stacked Interventions; the
    clean run is an identity variant of the same compiled sweep."""
    width = config.d_ff if kind == "neuron" else config.n_heads
    identity = edit_interventions(config, kind, unit.layer, jnp.zeros((1, width)), 1.0, jnp.asarray(unit.delta))
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), identity, ivs)
    taps = forward_variants(params, tokens, mask, both, config=config)
    l = unit.layer
    if kind == "neuron":
        local = jnp.einsum("vbd,d->vb", taps["resid_post"][:, :, l], unit.v_mlp[l])
    else:
        mid = block.norm(taps["resid_mid"][:, :, l], params["layers"]["mlp_norm"][l], config)
        local = jnp.einsum("vbd,d->vb", mid, unit.v_attn[l])
    global_ = jnp.einsum("vbd,d->vb", taps["final"], unit.v_ref)
    return np.asarray(local[1:] - local[:1]), np.asarray(global_[1:] - global_[:1])


def make_unit(model, group_items, layer, seed=0):
    """A Unit on the emotion and neutral prompts of `group_items`, with random directions and Deltas."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    unit_vec = lambda *shape: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(rng.normal(size=shape)).astype(np.float32)
    # One width for both prompt kinds: every compiled sweep serves both.
    both = tokenize_prompts(model.tokenizer, [emotion_messages(i) for i in group_items]
                            + [neutral_messages(i) for i in group_items])
    n = len(group_items)
    emotion, neutral = (SimpleNamespace(tokens=both.tokens[rows], mask=both.mask[rows])
                        for rows in (slice(0, n), slice(n, 2 * n)))
    prefixes = [capture_prefix(model.params, b.tokens, b.mask, config=cfg, keep_sequence=True) for b in (emotion, neutral)]
    deltas = {"neuron": rng.normal(size=cfg.d_ff).astype(np.float32),
              "head": rng.normal(size=cfg.q_dim).astype(np.float32)}
    units = {kind: validation.Unit(model.params, cfg, layer, prefixes[0], prefixes[1], unit_vec(cfg.n_layers, cfg.d_model),
                                   unit_vec(cfg.n_layers, cfg.d_model), unit_vec(cfg.d_model), deltas[kind])
             for kind in validation.KINDS}
    return units, emotion, neutral


def check_unit_against_forwards(model, units, emotion, neutral, masks, lambdas, rel):
    cfg = model.config
    for kind, unit in units.items():
        for lam in (None, *lambdas):
            batch = emotion if lam is None else neutral
            ivs = edit_interventions(cfg, kind, unit.layer, jnp.asarray(masks[kind]), lam, jnp.asarray(unit.delta))
            want = brute_changes(model.params, cfg, batch.tokens, batch.mask, ivs, unit, kind)
            for readout, expected in zip(validation.READOUTS, want):
                got = validation.READOUT_FNS[(kind, readout)](unit, lam)(masks[kind])
                scale = max(1.0, float(np.abs(expected).max()))
                np.testing.assert_allclose(got, expected, rtol=0, atol=rel * scale,
                                           err_msg=f"{kind} {readout} lambda={lam}")
                assert np.abs(expected).max() > 1e-3  # the edits move the score


def tiny_masks(cfg):
    """Three sets per kind: the closed form pads three head sets to four (its compiled set count)."""
    neuron = np.zeros((3, cfg.d_ff), np.float32)
    neuron[0, [3, 7]] = 1
    neuron[1, [0, 5, 11, 40]] = 1
    neuron[2, 20] = 1
    head = np.zeros((3, cfg.n_heads), np.float32)
    head[0, 1] = 1
    head[1, [0, 2, 3]] = 1
    head[2, [1, 2]] = 1
    return {"neuron": neuron, "head": head}


def test_every_readout_equals_forward_with_interventions():
    model = tiny_loaded_model()
    chosen = [i for i in items(split(1)) if i.emotion == "fear"]
    units, emotion, neutral = make_unit(model, chosen, layer=1)
    check_unit_against_forwards(model, units, emotion, neutral, tiny_masks(model.config), (0.5, 2.0), 2e-5)


def test_every_readout_equals_forward_with_interventions_under_post_norms():
    """Gemma's post-sublayer norms: the local read-outs are computed through them, set by set."""
    model = tiny_loaded_model(config=TINY_GEMMA_CONFIG)
    chosen = [i for i in items(split(1)) if i.emotion == "fear"]
    units, emotion, neutral = make_unit(model, chosen, layer=2)
    check_unit_against_forwards(model, units, emotion, neutral, tiny_masks(model.config), (0.5, 2.0), 3e-5)


def test_components_validation_and_causal_run_on_a_post_norm_model(tmp_path):
    from emojax.stages import causal

    ctx = tiny_context(tmp_path, train=split(1), model=tiny_loaded_model(config=TINY_GEMMA_CONFIG),
                       validation_draws=2)
    components.run(ctx)
    summary = validation.run(ctx, layers=[1], prompts_per_emotion=1, lambdas=(1.0,))
    assert summary["layers"] == [1]
    stats, _ = read_npz(ctx.run.path / "components" / "neuron_stats.npz")
    assert np.isfinite(stats["C_mean"]).all()
    cfg = ctx.config
    batch = tokenize_prompts(ctx.model.tokenizer, [emotion_messages(i) for i in items(ctx.train)[:2]])
    geometry, _ = read_npz(ctx.run.path / "directions" / "directions.npz")
    scores = causal.prompt_scores(ctx.model.params, batch.tokens, batch.mask, np.array([0, 1]), geometry, [1], cfg)
    assert scores["neuron_analytic"].shape == (2, cfg.n_layers, cfg.d_ff)
    assert np.isfinite(scores["head_analytic"]).all() and np.isfinite(scores["neuron_causal"][:, 1]).all()


def test_component_sets_and_prompt_selection():
    order = np.array([5, 2, 7, 0, 1, 3, 4, 6])
    sets = validation.component_sets(order, (1, 2, 4, 8), draws=30, rng=np.random.default_rng(0))
    assert sets.has_control.tolist() == [True, True, True, False]
    for i, k in enumerate(sets.ks):
        assert set(np.flatnonzero(sets.targeted[i])) == set(order[:k].tolist())
        if sets.has_control[i]:
            assert (sets.random[i].sum(-1) == k).all()
            assert not (sets.random[i][:, order[:k]]).any()   # never a targeted component
        else:
            assert not sets.random[i].any()
    assert len({tuple(r) for r in sets.random[0]}) == 7     # k = 1: every other component gets drawn
    assert validation.head_ks(9) == (1, 2, 4, 8, 9) and validation.head_ks(4) == (1, 2, 4)

    calls = []

    def score(masks):
        calls.append(len(masks))
        return masks @ np.arange(8.0)[:, None]

    masks = np.array([[0, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(validation.on_unique(masks, score)[:, 0], [1.0, 0.0, 1.0])
    assert calls == [2]
    emotion = np.array([0, 1, 0, 0, 2, 3, 4, 5, 0, 0])
    chosen = validation.select_rows(emotion, 3)
    assert chosen[0].tolist() == [0, 3, 9] and chosen[1].tolist() == [1]
    with pytest.raises(InputError, match="no item of fear"):
        validation.select_rows(np.array([0, 1, 2, 4, 5]), 2)


def test_stage_writes_the_table_and_plots(tmp_path):
    ctx = tiny_context(tmp_path, train=split(1), validation_draws=2)
    components.run(ctx)
    summary = validation.run(ctx, layers=[1], prompts_per_emotion=2, lambdas=LAMBDAS)
    out = ctx.run.path / "validation"
    with open(out / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(validation.COLUMNS)
    cfg = ctx.config
    n_neuron_k, n_head_k = len(validation.grid_ks("neuron", cfg)), len(validation.grid_ks("head", cfg))
    assert len(rows) == 6 * (n_neuron_k + n_head_k) * (1 + len(LAMBDAS)) * 2
    assert summary["prompts"] == {e: 2 for e in EMOTIONS} and summary["draws"] == 2

    # One row recomputed from its definition: ablating the top-2 neurons moves the local score by
    # minus the sum of their contributions, averaged over the chosen prompts.
    row = next(r for r in rows if r["emotion"] == "anger" and r["kind"] == "neuron" and r["k"] == "2"
               and r["test"] == "ablation" and r["readout"] == "local")
    stats, _ = read_npz(ctx.run.path / "components" / "neuron_stats.npz")
    dirs, _ = read_npz(ctx.run.path / "directions" / "directions.npz")
    anger = [i for i in items(ctx.train) if i.emotion == "anger"]
    batch = tokenize_prompts(ctx.model.tokenizer, [emotion_messages(i) for i in anger[:: len(anger) - 1]])
    g = np.asarray(forward(ctx.model.params, batch.tokens, config=cfg, mask=batch.mask, logits="none",
                           taps=TapSpec(points=("g",), at="last")).taps["g"])[:, 1]
    beta = np.asarray(ctx.model.params["layers"]["w_down"][1]) @ dirs["dirs_mlp"][0, 1]
    top = stats["order"][0, 1, :2]
    want = -(g[:, top] * beta[top]).sum(-1)
    assert float(row["targeted_mean"]) == pytest.approx(want.mean(), abs=1e-5)
    assert float(row["targeted_sd"]) == pytest.approx(want.std(), abs=1e-5)
    assert row["lambda"] == "" and int(row["n"]) == 2 and int(row["draws"]) == 2

    full = [r for r in rows if r["kind"] == "head" and int(r["k"]) == cfg.n_heads]
    assert full and all(math.isnan(float(r["control_mean"])) and r["draws"] == "0" for r in full)
    enhance = [r for r in rows if r["test"] == "enhancement" and r["kind"] == "neuron" and r["readout"] == "local"]
    assert all(float(r["targeted_sd"]) == 0.0 for r in enhance)   # an added vector moves every prompt alike
    for png in ("ablation_vs_k", "enhancement_vs_lambda", "enhancement_vs_k"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert validation.run(ctx, layers=[1], prompts_per_emotion=2, lambdas=LAMBDAS) == summary  # done: skipped
    with pytest.raises(InputError, match="at least 2"):
        validation.run(ctx, layers=[1], prompts_per_emotion=2, draws=1, lambdas=LAMBDAS)
    with pytest.raises(InputError, match="must be in"):
        validation.run(ctx, layers=[cfg.n_layers])


@pytest.mark.slow
def test_default_model_readouts_equal_forward_with_interventions(default_model):
    """Suffix passes (neurons), recompute-from-layer and the closed form (heads) on the default model."""
    cfg = default_model.config
    chosen = [i for i in items(load_dataset("bundled:train")[:1]) if i.emotion == "anger"][:2]
    units, emotion, neutral = make_unit(default_model, chosen, cfg.n_layers - 4)
    neuron = np.zeros((2, cfg.d_ff), np.float32)
    neuron[0, [10, 500]] = 1
    neuron[1, np.arange(0, cfg.d_ff, 97)] = 1
    head = np.zeros((2, cfg.n_heads), np.float32)
    head[0, 2] = 1
    head[1, [0, 4, 8]] = 1
    check_unit_against_forwards(default_model, units, emotion, neutral, {"neuron": neuron, "head": head}, (2.0,), 2e-4)
