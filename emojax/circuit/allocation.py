"""Per-layer budget allocation of a global emotion circuit (method.md S6e).

Weights come from the clipped sublayer influence; every layer gets a minimum, the remainder is
apportioned by largest remainders with a cap on any layer's additional share, and counts a layer
cannot hold (more heads than it has) are back-filled into layers with room.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The per-layer counts of one kind (neurons or heads) and how they were reached."""

    counts: tuple[int, ...]      # used k_l per layer
    weights: tuple[float, ...]   # clipped influence, before normalisation
    normalised: tuple[float, ...]
    base: tuple[int, ...]        # the per-layer minimum m
    added: tuple[int, ...]       # b_l after the remainder sweeps
    planned: tuple[int, ...]     # m + b_l
    available: int               # components per layer (H or d_ff)
    deficit: int                 # units that could not be placed anywhere

    def log(self) -> dict:
        return dataclasses.asdict(self)


def allocate(influence: Sequence[float], budget: int, min_per_layer: int, available: int,
             cap_ratio: float = 0.4) -> Allocation:
    """Split `budget` components over layers in proportion to max(influence, 0).

    Follows S6e exactly: minimum m per layer (falling back to 1, then 0, when the budget cannot
    cover it), remainder R = K - L*m apportioned by largest remainders (ties to the lower layer) with
    each layer's additional units capped at floor(cap_ratio * K), sweeps repeated until nothing is
    left or no layer can take more, then availability back-fill by decreasing planned count.
    """
    n_layers = len(influence)
    if budget < 0 or available <= 0:
        raise ValueError(f"allocate: budget={budget} and available={available} must be >= 0 and > 0")
    w = np.maximum(np.asarray(influence, dtype=np.float64), 0.0)
    norm = w / w.sum() if w.sum() > 0 else np.full(n_layers, 1.0 / n_layers)
    m = min_per_layer
    while m > 0 and budget < n_layers * m:
        m = 1 if m > 1 else 0
    remainder = budget - n_layers * m
    cap = math.floor(cap_ratio * budget)
    quota = norm * remainder
    added = np.minimum(np.floor(quota).astype(np.int64), cap)
    left = remainder - int(added.sum())
    order = sorted(range(n_layers), key=lambda l: (-(quota[l] - math.floor(quota[l])), l))
    while left > 0:
        progressed = False
        for layer in order:
            if left == 0:
                break
            if added[layer] < cap:
                added[layer] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    planned = m + added
    used = np.minimum(planned, available)
    deficit = int((planned - used).sum()) + left
    by_planned = sorted(range(n_layers), key=lambda l: (-planned[l], l))
    for layer in by_planned:
        if deficit == 0:
            break
        take = min(available - used[layer], deficit)
        used[layer] += take
        deficit -= take
    return Allocation(
        counts=tuple(int(c) for c in used), weights=tuple(float(x) for x in w),
        normalised=tuple(float(x) for x in norm), base=(m,) * n_layers,
        added=tuple(int(a) for a in added), planned=tuple(int(p) for p in planned),
        available=available, deficit=deficit)


def top_k_per_layer(scores: np.ndarray, counts: Sequence[int]) -> list[list[int]]:
    """Indices of the top-k_l scores in each layer (descending; stable, so ties go to the lower index)."""
    scores = np.asarray(scores)
    if scores.shape[0] != len(counts):
        raise ValueError(f"top_k_per_layer: {scores.shape[0]} layers of scores, {len(counts)} counts")
    return [[int(i) for i in np.argsort(-scores[l], kind="stable")[:k]] for l, k in enumerate(counts)]
