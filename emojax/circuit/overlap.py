"""Cross-emotion overlap of circuit members (method.md S6f, D21)."""
from __future__ import annotations

import itertools
from typing import Hashable, Mapping, Set

import numpy as np


def jaccard(a: Set[Hashable], b: Set[Hashable]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def overlap_coefficient(a: Set[Hashable], b: Set[Hashable]) -> float:
    smaller = min(len(a), len(b))
    return len(a & b) / smaller if smaller else 0.0


def pairwise(members: Mapping[str, Set[Hashable]], metric=jaccard) -> tuple[list[str], np.ndarray]:
    """Symmetric matrix of `metric` over emotions (diagonal 1)."""
    names = list(members)
    out = np.eye(len(names))
    for i, j in itertools.combinations(range(len(names)), 2):
        out[i, j] = out[j, i] = metric(members[names[i]], members[names[j]])
    return names, out


def mean_pairwise(members: Mapping[str, Set[Hashable]], metric=jaccard) -> float:
    """Mean of `metric` over all unordered emotion pairs (15 for six emotions)."""
    names = list(members)
    values = [metric(members[a], members[b]) for a, b in itertools.combinations(names, 2)]
    return float(np.mean(values)) if values else 0.0
