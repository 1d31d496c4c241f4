"""Direction math equals a loop-by-loop transcription of method.md S2, S5, S6a-c."""
from __future__ import annotations

import numpy as np
import pytest

from emojax.method import directions as d


def _synthetic(seed: int = 0, n_groups: int = 7, layers: int = 3, width: int = 5, drop: int = 2):
    rng = np.random.default_rng(seed)
    emotion, group, rows = [], [], []
    for g in range(n_groups):
        for e in range(6):
            if g < drop and e == g:  # the first `drop` groups are incomplete
                continue
            emotion.append(e)
            group.append(10 * g + 3)
            rows.append(rng.normal(size=(layers, width)) + 0.5 * e)
    return np.array(rows), d.Groups(np.array(emotion), np.array(group))


def _reference_directions(states, groups):
    complete = [g for g in np.unique(groups.group)
                if sorted(groups.emotion[groups.group == g]) == list(range(6))]
    out = np.zeros((6,) + states.shape[1:])
    for e in range(6):
        acc = np.zeros(states.shape[1:])
        for g in complete:
            members = groups.group == g
            mu = states[members].mean(axis=0)
            acc += states[members & (groups.emotion == e)][0] - mu
        out[e] = acc / len(complete)
    out -= out.mean(axis=0)
    return out, complete


def test_directions_and_deltas_match_reference() -> None:
    states, groups = _synthetic()
    ref, complete = _reference_directions(states, groups)
    assert len(complete) == 5
    np.testing.assert_allclose(d.difference_vectors(states, groups), ref, rtol=1e-5, atol=1e-6)
    unit_ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    dirs = d.emotion_directions(states, groups)
    np.testing.assert_allclose(dirs, unit_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(d.difference_vectors(states, groups).sum(axis=0), 0.0, atol=1e-5)


def test_partial_groups_use_incomplete_groups() -> None:
    states, groups = _synthetic()
    full = d.emotion_directions(states, groups)
    partial = d.emotion_directions(states, groups, partial=True)
    assert not np.allclose(full, partial)
    with pytest.raises(ValueError, match="no complete groups"):
        d.emotion_directions(states[:3], d.Groups(groups.emotion[:3], groups.group[:3]))


def test_sigma_reference_and_sign_alignment() -> None:
    states, groups = _synthetic()
    keep = groups.complete_mask()
    want = np.sqrt((states[keep] ** 2).mean(-1)).mean(0)
    np.testing.assert_allclose(d.residual_scale(states, groups), want, rtol=1e-5)
    rng = np.random.default_rng(1)
    attn = d.unit(rng.normal(size=(6, 8, 4)))
    mlp = d.unit(rng.normal(size=(6, 8, 4)))
    v_ref = d.reference_direction(attn, mlp, range(5, 8))
    for e in range(6):
        anchor = attn[e, 5]
        vecs = [v * (1 if v @ anchor >= 0 else -1) for v in list(attn[e, 5:8]) + list(mlp[e, 5:8])]
        s = np.sum(vecs, axis=0)
        np.testing.assert_allclose(v_ref[e], s / np.linalg.norm(s), rtol=1e-5)
    w = d.sign_aligned(mlp, v_ref)
    assert (np.einsum("eld,ed->el", w, v_ref) >= 0).all()


def test_separability_detects_emotion_signal() -> None:
    rng = np.random.default_rng(2)
    emotion = np.tile(np.arange(6), 20)
    group = np.repeat(np.arange(20), 6)
    scenario = group // 2
    signal = rng.normal(size=(6, 1, 8))
    states = rng.normal(size=(120, 2, 8)) * 0.3 + rng.normal(size=(20, 1, 8))[group] * 3
    states[:, 1] += signal[emotion, 0] * 2  # layer 1 carries the emotion, layer 0 does not
    sep = d.separability(states, d.Groups(emotion, group), scenario)
    assert sep[1] > 0.9 and sep[0] < 0.5
