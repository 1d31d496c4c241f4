"""Capture and directions stages on a tiny random model, checked against per-item forwards and numpy."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from emojax.data import EMOTIONS, items
from emojax.method.prompts import emotion_messages, tokenize_prompts
from emojax.model.forward import forward
from emojax.runs import InputError, read_npz
from emojax.stages import capture, directions_stage, elicit
from emojax.stages.context import Settings
from stage_fixtures import make_context, split, tiny_loaded_model

# Item indices (record -> valence -> emotion order) the judge rejects: group 0 loses fear, group 4 anger.
REJECTED = {0 * 6 + EMOTIONS.index("fear"), 4 * 6 + EMOTIONS.index("anger")}


class IndexJudge:
    """Rejects the texts at fixed positions of the (single) judge call."""

    identity = "index-judge"

    def __call__(self, texts, targets):
        match = np.array([0 if i in REJECTED else 1 for i in range(len(texts))])
        return SimpleNamespace(match=match, errors=[None] * len(texts))


def test_capture_batches_equal_single_forwards(tmp_path) -> None:
    model = tiny_loaded_model()
    chosen = items(split(1))[::7][:3]            # three prompts of different lengths
    prompts = [emotion_messages(i) for i in chosen]
    got = capture.capture_prompts(model, prompts, directory=tmp_path, chunk_size=2, date_string="15 Sep 2025",
                                  fingerprint="t")
    assert set(got) == {"resid_mid", "resid_post", "final", "z", "g"}
    cfg = model.config
    assert got["g"].shape == (3, cfg.n_layers, cfg.d_ff) and got["z"].shape == (3, cfg.n_layers, cfg.q_dim)
    assert got["final"].shape == (3, cfg.d_model)
    for row, messages in enumerate(prompts):
        single = tokenize_prompts(model.tokenizer, [messages])
        alone = forward(model.params, single.tokens, config=cfg, taps=capture.CAPTURE_TAPS, logits="none").taps
        for name, value in alone.items():
            np.testing.assert_allclose(got[name][row], np.asarray(value)[0], rtol=1e-4, atol=1e-5, err_msg=name)


def _reference(acts: dict, keys: list[str], ref_layers: range) -> dict:
    """method.md S2/S5/S6a/S6b transcribed loop by loop over complete groups."""
    by_group: dict[str, dict[int, int]] = {}
    for row, key in enumerate(keys):
        sid, valence, emotion = key.split("__")
        by_group.setdefault(f"{sid}__{valence}", {})[EMOTIONS.index(emotion)] = row
    complete = [rows for rows in by_group.values() if len(rows) == 6]
    mlp = acts["resid_post"].astype(np.float64).copy()
    mlp[:, -1] = acts["final"]
    sources = {"dirs_attn": acts["resid_mid"], "dirs_mlp": mlp, "delta_mlp": acts["g"], "delta_attn": acts["z"]}
    out = {}
    for name, x in sources.items():
        x = np.asarray(x, np.float64)
        centroids = np.zeros((6,) + x.shape[1:])
        for rows in complete:
            mu = np.mean([x[rows[e]] for e in range(6)], axis=0)
            for e in range(6):
                centroids[e] += (x[rows[e]] - mu) / len(complete)
        centroids -= centroids.mean(axis=0)
        out[name] = centroids if name.startswith("delta") else centroids / np.linalg.norm(centroids, axis=-1,
                                                                                          keepdims=True)
    members = [r for rows in complete for r in rows.values()]
    for name, x in (("sigma_attn", acts["resid_mid"]), ("sigma_mlp", mlp)):
        out[name] = np.mean([np.sqrt(np.mean(np.asarray(x[r], np.float64) ** 2, axis=-1)) for r in members], axis=0)
    v_ref = np.zeros((6, acts["final"].shape[-1]))
    for e in range(6):
        anchor = out["dirs_attn"][e, ref_layers[0]]
        for layer in ref_layers:
            for vec in (out["dirs_attn"][e, layer], out["dirs_mlp"][e, layer]):
                v_ref[e] += vec if vec @ anchor >= 0 else -vec
        v_ref[e] /= np.linalg.norm(v_ref[e])
    out["v_ref"] = v_ref
    return out, len(complete)


def test_directions_stage_matches_numpy_reference_and_falls_back(tmp_path, caplog) -> None:
    ctx = make_context(tmp_path, judge=IndexJudge(), settings=Settings(min_complete_groups=2))
    elicit.run(ctx, "train")
    summary = directions_stage.run(ctx)
    out = ctx.run.path
    table = json.loads((out / "capture" / "items.json").read_text())
    assert summary["rule"] == table["rule"] == "accepted" and table["fallback"] is None
    all_items = items(ctx.train)
    kept = [i.key for k, i in enumerate(all_items) if k not in REJECTED]
    assert table["keys"] == kept and all(table["accepted"])

    # Reference activations: one batch of every prompt at its natural width (not the stage's chunks).
    batch = tokenize_prompts(ctx.model.tokenizer, [emotion_messages(i) for i in all_items])
    taps = forward(ctx.model.params, batch.tokens, config=ctx.config, mask=batch.mask,
                   taps=capture.CAPTURE_TAPS, logits="none").taps
    rows = [k for k in range(len(all_items)) if k not in REJECTED]
    acts = {name: np.asarray(value)[rows] for name, value in taps.items()}
    want, n_complete = _reference(acts, kept, ctx.hparams.ref_layers)
    assert n_complete == 4 and summary["complete_groups"] == 4

    got, meta = read_npz(out / "directions" / "directions.npz")
    assert meta["rule"] == "accepted" and meta["complete_groups"] == 4 and meta["model_hash"] == ctx.model.source_hash
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=2e-3, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(np.linalg.norm(got["dirs_mlp"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got["delta_mlp"].sum(axis=0), 0.0, atol=1e-5)

    geometry = json.loads((out / "directions" / "geometry.json").read_text())
    n_sub = 2 * ctx.config.n_layers
    assert np.asarray(geometry["sublayer_cosine"]["anger"]).shape == (n_sub, n_sub)
    assert np.asarray(geometry["cross_emotion_cosine"]["mlp"]).shape == (ctx.config.n_layers, 6, 6)
    assert len(geometry["separability"]["mlp"]) == ctx.config.n_layers
    for png in ("pca_mlp_states", "cosine_sublayers", "cosine_emotions_mlp", "separability"):
        assert (out / "directions" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Fewer complete groups than the minimum: every prompted item, with a warning and the rule recorded.
    strict = dataclasses.replace(ctx, settings=Settings(min_complete_groups=5))
    summary = directions_stage.run(strict)
    assert summary["rule"] == "all" and "only 4 complete groups" in summary["fallback"]
    assert any("only 4 complete groups" in r.getMessage() for r in caplog.records)
    table = json.loads((out / "capture" / "items.json").read_text())
    assert table["n_items"] == len(all_items) and sum(table["accepted"]) == len(all_items) - len(REJECTED)
    _, meta = read_npz(out / "directions" / "directions.npz")
    assert meta["rule"] == "all" and meta["requested_rule"] == "accepted" and meta["complete_groups"] == 6
    assert directions_stage.load(strict)[0]["v_ref"].shape == (6, ctx.config.d_model)


def test_select_items_rules() -> None:
    records = split(1)
    keys = {i.key for i in items(records)}
    chosen = capture.select_items(records, keys - {"work_00__positive__fear"}, "accepted", 2)
    assert chosen.rule == "accepted" and len(chosen.items) == 17 and chosen.complete_groups == 2
    everything = capture.select_items(records, set(), "all", 99)
    assert everything.rule == "all" and everything.fallback is None and not everything.accepted.any()
    with pytest.raises(InputError, match="directions rule"):
        capture.select_items(records, keys, "some", 1)


def _raw_separability_loop(states, emotion, scenario):
    correct = np.zeros(states.shape[1])
    for s in np.unique(scenario):
        train, test = scenario != s, scenario == s
        mean = states[train].mean(axis=0)
        cents = np.stack([states[train & (emotion == e)].mean(axis=0) for e in range(6)]) - mean
        for x, e in zip(states[test], emotion[test]):
            for layer in range(states.shape[1]):
                u = x[layer] - mean[layer]
                sims = [u @ c / np.linalg.norm(u) / np.linalg.norm(c) for c in cents[:, layer]]
                correct[layer] += int(np.argmax(sims) == e)
    return correct / len(states)


def test_raw_separability_needs_the_emotion_to_beat_the_content() -> None:
    """Layer 0: large scenario content, tiny emotion offset; layer 1: the emotion offset dominates."""
    rng = np.random.default_rng(3)
    n_scenarios, width = 8, 12
    offsets = rng.normal(size=(6, width))
    emotion = np.tile(np.arange(6), 2 * n_scenarios)
    group = np.repeat(np.arange(2 * n_scenarios), 6)
    scenario = group // 2
    content = rng.normal(size=(2 * n_scenarios, width)) * 10
    states = np.stack([content[group] + 0.05 * offsets[emotion],
                       content[group] + 20 * offsets[emotion]], axis=1) + 0.01 * rng.normal(size=(len(group), 2, width))
    groups = directions_stage.dirs_lib.Groups(emotion, group)
    raw = directions_stage.raw_separability(states, groups, scenario)
    np.testing.assert_allclose(raw, _raw_separability_loop(states, emotion, scenario), atol=1e-6)
    assert raw[0] < 0.5 and raw[1] == 1.0
    curves = directions_stage.separability_curves(states, states, groups, scenario)
    assert curves["mlp_group_centred"][0] == 1.0      # centring removes the content: trivially separable
