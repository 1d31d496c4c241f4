"""The sublayer stage (S6a-S6d): its chunked suffix-pass wiring equals brute-force perturbed forwards,
its outputs follow the official layout, and a finished stage is skipped."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from emojax.data import EMOTIONS, items
from emojax.method.directions import sign_aligned, unit
from emojax.method.hparams import INFLUENCE_ALPHAS
from emojax.method.prompts import neutral_messages, tokenize_prompts
from emojax.runs import read_npz, write_json, write_npz
from emojax.runs.stage_record import mark_finished, model_hash
from emojax.scan.brute import brute_sublayer_scan
from emojax.stages import sublayer
from stage_fixtures import TINY_PRESET, make_context

# A subset of items with uneven emotion counts and no surprise item at all.
MISSING = "surprise"


def captured_keys(records):
    chosen = [i for n, i in enumerate(items(records)) if i.emotion != MISSING and n % 5 != 1]
    return [i.key for i in chosen]


def fake_directions(config, seed=0):
    rng = np.random.default_rng(seed)
    L, D = config.n_layers, config.d_model
    return {
        "dirs_attn": unit(rng.normal(size=(6, L, D))).astype(np.float32),
        "dirs_mlp": unit(rng.normal(size=(6, L, D))).astype(np.float32),
        "delta_mlp": rng.normal(size=(6, L, config.d_ff)).astype(np.float32),
        "delta_attn": rng.normal(size=(6, L, config.q_dim)).astype(np.float32),
        "sigma_attn": rng.uniform(0.5, 1.5, L).astype(np.float32),
        "sigma_mlp": rng.uniform(0.5, 1.5, L).astype(np.float32),
        "v_ref": unit(rng.normal(size=(6, D))).astype(np.float32),
    }


def write_upstream(ctx, keys, vectors):
    """What the capture and directions stages would have written."""
    emotion = [EMOTIONS.index(k.split("__")[2]) for k in keys]
    write_json(ctx.run.stage("capture") / "items.json", {"rule": "accepted", "keys": keys, "emotion": emotion,
                                                         "n_items": len(keys)})
    mark_finished(ctx.run, "capture", {"fake": 1}, {"rule": "accepted"})
    write_npz(ctx.run.stage("directions") / "directions.npz", vectors, meta={"model_hash": model_hash(ctx)})
    mark_finished(ctx.run, "directions", {"fake": 1}, {})


@pytest.fixture
def ctx(tmp_path):
    preset = dataclasses.replace(TINY_PRESET, batch_size=5)  # several chunks, the last one padded
    context = make_context(tmp_path, preset=preset)
    keys = captured_keys(context.train)
    write_upstream(context, keys, fake_directions(context.config))
    return context, keys


def brute_force_influence(ctx, keys, vectors):
    """Per emotion: mean over its rows of (s_pert - s_base) / dose from full perturbed forwards."""
    cfg = ctx.config
    by_id = {r.skeleton_id: r for r in ctx.train}
    rows = [k.split("__") for k in keys]
    emotion = np.array([EMOTIONS.index(e) for _, _, e in rows])
    batch = tokenize_prompts(ctx.model.tokenizer, [neutral_messages(by_id[s], v) for s, v, _ in rows])
    w = np.stack([sign_aligned(vectors["dirs_attn"], vectors["v_ref"]),
                  sign_aligned(vectors["dirs_mlp"], vectors["v_ref"])], axis=1)
    sigma = np.stack([vectors["sigma_attn"], vectors["sigma_mlp"]])
    readout = vectors["v_ref"][emotion]
    scores = brute_sublayer_scan(ctx.model.params, batch.tokens, batch.mask, directions=w[emotion], sigma=sigma,
                                 alphas=INFLUENCE_ALPHAS, readout=readout, config=cfg)  # [2, L, A, B]
    base = np.einsum("bd,bd->b", readout, _final_states(ctx, batch))
    dose = np.asarray(INFLUENCE_ALPHAS)[None, None, :, None] * sigma[:, :, None, None]
    per_row = (scores - base) / dose
    return np.stack([per_row[..., emotion == e].mean(axis=-1) if (emotion == e).any()
                     else np.zeros(per_row.shape[:3]) for e in range(6)])


def _final_states(ctx, batch):
    from emojax.model.forward import forward
    from emojax.model.taps import TapSpec

    out = forward(ctx.model.params, batch.tokens, config=ctx.config, mask=batch.mask, logits="none",
                  taps=TapSpec(points=("final",), at="last"))
    return np.asarray(out.taps["final"])


def test_stage_equals_brute_force_forwards(ctx):
    context, keys = ctx
    vectors = fake_directions(context.config)
    summary = sublayer.run(context)
    arrays, meta = read_npz(context.run.path / "sublayer" / "influence.npz")
    want = brute_force_influence(context, keys, vectors)
    assert arrays["influence"].shape == (6, 2, context.config.n_layers, len(INFLUENCE_ALPHAS))
    np.testing.assert_allclose(arrays["influence"], want, rtol=0, atol=1e-3 * np.abs(want).max())
    np.testing.assert_allclose(arrays["mean_over_alpha"], want.mean(axis=-1), rtol=0, atol=1e-3 * np.abs(want).max())
    assert meta["model_hash"] == model_hash(context)
    assert summary["samples"][MISSING] == 0 and summary["emotions_without_samples"] == [MISSING]
    assert sum(summary["samples"].values()) == len(keys)


def test_outputs_follow_the_official_layout(ctx):
    context, _ = ctx
    sublayer.run(context)
    out = context.run.path / "sublayer"
    L = context.config.n_layers
    with open(out / "importance_mean_over_alpha.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["emotion", "kind", "layer", "I_final", "I_final_normalized"]
    assert len(rows) == 6 * 2 * L
    assert [r["emotion"] for r in rows[:: 2 * L]] == list(EMOTIONS)
    anger = [r for r in rows if r["emotion"] == "anger"]
    assert sum(float(r["I_final_normalized"]) for r in anger) == pytest.approx(1.0, abs=1e-6)
    sigma = json.loads((out / "sigma_summary.json").read_text())
    assert list(sigma) == [f"attention_{l}" for l in range(L)] + [f"mlp_{l}" for l in range(L)]
    assert (out / "influence_heatmap.png").stat().st_size > 0


def test_finished_stage_is_skipped_and_reruns_when_inputs_change(ctx):
    context, keys = ctx
    sublayer.run(context)
    done = json.loads((context.run.path / "sublayer" / "done.json").read_text())
    sublayer.run(context)
    assert json.loads((context.run.path / "sublayer" / "done.json").read_text()) == done
    write_upstream(context, keys, fake_directions(context.config, seed=1))
    sublayer.run(context)
    assert json.loads((context.run.path / "sublayer" / "done.json").read_text())["fingerprint"] != done["fingerprint"]


def test_scan_rows_group_items_by_their_neutral_prompt(ctx):
    context, keys = ctx
    rows = sublayer.scan_rows(keys, [EMOTIONS.index(k.split("__")[2]) for k in keys], context.train)
    assert len(rows.groups) == len({k.rsplit("__", 1)[0] for k in keys})
    assert all(np.diff(rows.row_group) >= 0)
    for key, group, emotion in zip(rows.keys, rows.row_group, rows.row_emotion):
        record, valence = rows.groups[group]
        assert key == f"{record.skeleton_id}__{valence}__{EMOTIONS[emotion]}"
    with pytest.raises(ValueError, match="not in the split"):
        sublayer.scan_rows(["nowhere_00__positive__anger"], [0], context.train)


def test_sample_items_spans_the_capture_per_emotion():
    keys = [f"s{i}__positive__x" for i in range(10)]
    emotion = np.array([0, 1, 0, 1, 0, 1, 0, 2, 0, 0])
    chosen, labels = sublayer.sample_items(keys, emotion, 2)
    assert chosen == ["s0__positive__x", "s1__positive__x", "s5__positive__x", "s7__positive__x", "s9__positive__x"]
    assert labels.tolist() == [0, 1, 1, 2, 0]
    everything, all_labels = sublayer.sample_items(keys, emotion, None)
    assert everything == keys and all_labels.tolist() == emotion.tolist()
