"""Replacement values for ablations (method.md §14.3): zero, mean, group-mean and resample.

Every causal scan takes `replacement` for the ablated activation, in the layout of the capture
(activations at t*, [.., L, W] with W = F for neurons or H*Dh for heads):

    None            zero-ablation
    [L, W]          one value per component, shared by all rows     (mean ablation)
    [B, L, W]       one value per row and component                  (group-mean ablation)
    [R, B, L, W]    R draws per row; effects are averaged over draws (resample ablation)

The builders below compute these from captured activations.
"""
from __future__ import annotations

from typing import Any

import numpy as np

Array = Any


def mean_replacement(reference: Array) -> np.ndarray:
    """Mean activation over a reference set: reference [N, L, W] -> [L, W]."""
    return np.asarray(reference, np.float32).mean(axis=0)


def group_mean_replacement(acts: Array, groups: Array) -> np.ndarray:
    """Each item's activation replaced by the mean over its group (e.g. the six emotions of one
    scenario-event pair): acts [N, L, W], groups [N] -> [N, L, W]."""
    acts = np.asarray(acts, np.float32)
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.zeros((inverse.max() + 1,) + acts.shape[1:], np.float64)
    np.add.at(sums, inverse, acts)
    counts = np.bincount(inverse).reshape((-1,) + (1,) * (acts.ndim - 1))
    return (sums / counts)[inverse].astype(np.float32)


def resample_replacement(labels: Array, pool: Array, pool_labels: Array, *, draws: int,
                         seed: int = 0) -> np.ndarray:
    """For each item and draw, the activation of a random pool item with a different label (e.g. a
    different emotion): labels [N], pool [M, L, W], pool_labels [M] -> [draws, N, L, W]."""
    labels, pool_labels = np.asarray(labels), np.asarray(pool_labels)
    pool = np.asarray(pool, np.float32)
    rng = np.random.default_rng(seed)
    picks = np.empty((draws, len(labels)), np.int64)
    for i, label in enumerate(labels):
        candidates = np.nonzero(pool_labels != label)[0]
        if candidates.size == 0:
            raise ValueError(f"resample_replacement: no pool item has a label other than {label!r}")
        picks[:, i] = rng.choice(candidates, size=draws)
    return pool[picks]


def replacement_draws(replacement: Array | None, caller: str) -> list[np.ndarray | None]:
    """Split a replacement into the list of per-draw values ([L, W], [B, L, W] or None)."""
    if replacement is None:
        return [None]
    rep = np.asarray(replacement, np.float32)
    if rep.ndim == 4:
        return list(rep)
    if rep.ndim in (2, 3):
        return [rep]
    raise ValueError(f"{caller}: replacement has shape {rep.shape}; expected [L, W], [B, L, W] or [R, B, L, W]")


def replacement_at_layer(rep: np.ndarray | None, layer: int, batch: int, width: int) -> np.ndarray:
    """One draw's replacement at one layer as [B, W] (zeros for zero-ablation)."""
    if rep is None:
        return np.zeros((batch, width), np.float32)
    value = rep[layer] if rep.ndim == 2 else rep[:, layer]
    if value.shape[-1] != width:
        raise ValueError(f"replacement has width {value.shape[-1]}; expected {width}")
    return np.broadcast_to(value, (batch, width)).astype(np.float32)
