"""Context-agnostic emotion directions and the vectors derived from them (method.md S2, S5, S6a-c).

Everything here is plain array math on last-token activations captured once per item, so it is
checked against a direct numpy transcription of the method's equations in the tests.

Items are described by two integer arrays: `emotion` [N] (index into EMOTIONS) and `group` [N] (one id
per (scenario, valence) pair). A group is complete when all six emotions are present.
"""
from __future__ import annotations

import dataclasses

import numpy as np

N_EMOTIONS = 6


@dataclasses.dataclass(frozen=True)
class Groups:
    """Which items form complete groups, in a layout ready for vectorised centring."""

    emotion: np.ndarray   # [N]
    group: np.ndarray     # [N]

    def complete_ids(self) -> np.ndarray:
        ids = np.unique(self.group)
        present = np.zeros((ids.size, N_EMOTIONS), bool)
        present[np.searchsorted(ids, self.group), self.emotion] = True
        return ids[present.all(axis=1)]

    def complete_mask(self) -> np.ndarray:
        return np.isin(self.group, self.complete_ids())

    def check(self) -> None:
        keys = self.group.astype(np.int64) * N_EMOTIONS + self.emotion
        if np.unique(keys).size != keys.size:
            raise ValueError("Groups: an (emotion, group) pair occurs twice")
        if self.emotion.min(initial=0) < 0 or self.emotion.max(initial=0) >= N_EMOTIONS:
            raise ValueError("Groups: emotion indices must be in 0..5")


def _group_means(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per-item mean of its group's values (over the emotions present)."""
    ids, inverse = np.unique(group, return_inverse=True)
    sums = np.zeros((ids.size,) + values.shape[1:], np.float64)
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=ids.size).reshape((-1,) + (1,) * (values.ndim - 1))
    return (sums / counts)[inverse]


def centred_centroids(values: np.ndarray, groups: Groups, partial: bool = False) -> np.ndarray:
    """C_e = mean over groups of (x_{g,e} - mu_g), then the mean over emotions removed: [6, ...].

    Complete groups only by default (D2); `partial=True` centres every group on the emotions it has,
    where the final global-mean removal is no longer a no-op.
    """
    values = np.asarray(values, np.float64)
    keep = np.ones(len(values), bool) if partial else groups.complete_mask()
    if not keep.any():
        raise ValueError("no complete groups: directions need at least one group with all six emotions "
                         "(or the partial-groups rule)")
    vals, emo, grp = values[keep], groups.emotion[keep], groups.group[keep]
    centred = vals - _group_means(vals, grp)
    centroids = np.stack([centred[emo == e].mean(axis=0) if (emo == e).any()
                          else np.zeros(vals.shape[1:]) for e in range(N_EMOTIONS)])
    return centroids - centroids.mean(axis=0, keepdims=True)


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def emotion_directions(states: np.ndarray, groups: Groups, partial: bool = False) -> np.ndarray:
    """Unit directions v_e [6, L, D] from residual states [N, L, D] at t* (S2)."""
    return unit(centred_centroids(states, groups, partial)).astype(np.float32)


def difference_vectors(acts: np.ndarray, groups: Groups, partial: bool = False) -> np.ndarray:
    """Un-normalised emotion difference vectors Delta_e [6, L, W] at a component input (S5)."""
    return centred_centroids(acts, groups, partial).astype(np.float32)


def residual_scale(states: np.ndarray, groups: Groups, partial: bool = False) -> np.ndarray:
    """sigma_l = mean RMS of the states over complete-group items (S6a): [L]."""
    keep = np.ones(len(states), bool) if partial else groups.complete_mask()
    rms = np.sqrt(np.mean(np.asarray(states, np.float64)[keep] ** 2, axis=-1))
    return rms.mean(axis=0).astype(np.float32)


def reference_direction(dirs_attn: np.ndarray, dirs_mlp: np.ndarray, ref_layers: range) -> np.ndarray:
    """v_ref [6, D]: sign-align the 2|ref| directions to the first reference attention direction, sum,
    normalise (S6b)."""
    stack = np.concatenate([dirs_attn[:, list(ref_layers)], dirs_mlp[:, list(ref_layers)]], axis=1)
    anchor = dirs_attn[:, ref_layers[0]]
    signs = np.where(np.einsum("ekd,ed->ek", stack, anchor) < 0, -1.0, 1.0)
    return unit((stack * signs[..., None]).sum(axis=1)).astype(np.float32)


def sign_aligned(dirs: np.ndarray, v_ref: np.ndarray) -> np.ndarray:
    """w_e^l = sign(<v_e^l, v_ref,e>) v_e^l with sign(0) = +1 (S6c): [6, L, D]."""
    signs = np.where(np.einsum("eld,ed->el", dirs, v_ref) < 0, -1.0, 1.0)
    return (dirs * signs[..., None]).astype(np.float32)


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of `vectors` [n, D]."""
    u = unit(np.asarray(vectors, np.float64))
    return u @ u.T


def separability(states: np.ndarray, groups: Groups, scenario: np.ndarray) -> np.ndarray:
    """Leave-one-scenario-out nearest-centroid accuracy of the emotion, per layer: [L].

    For each held-out scenario, centroids of the group-centred states are fitted on the other
    scenarios' complete groups and each held-out item is assigned its nearest centroid by cosine.
    Chance is 1/6; high values mean the directions are context-agnostic.
    """
    keep = groups.complete_mask()
    vals = np.asarray(states, np.float64)[keep]
    emo, grp, scen = groups.emotion[keep], groups.group[keep], np.asarray(scenario)[keep]
    centred = vals - _group_means(vals, grp)
    correct = np.zeros(vals.shape[1])
    for s in np.unique(scen):
        train, test = scen != s, scen == s
        if not train.any():
            continue
        cents = np.stack([centred[train & (emo == e)].mean(axis=0) for e in range(N_EMOTIONS)])
        sims = np.einsum("nld,eld->nle", unit(centred[test]), unit(cents))
        correct += (sims.argmax(axis=-1) == emo[test][:, None]).sum(axis=0)
    return (correct / max(len(vals), 1)).astype(np.float32)
