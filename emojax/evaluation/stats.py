"""Small-sample statistics of judged accuracies: Wilson intervals and McNemar's paired test.

    wilson_interval(k, n)        score interval of a binomial proportion (Wilson 1927; Newcombe 1998,
                                 method 3), without continuity correction
    mcnemar(b, c)                exact conditional and mid-p McNemar tests on the discordant pairs
                                 (Fagerland, Lydersen & Laake 2013)
    discordant_pairs(a, b)       (b, c) of two methods' 0/1 outcomes on the same items
"""
from __future__ import annotations

import math
from typing import Mapping

from scipy.stats import binom, norm


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """(low, high) of the Wilson score interval for successes/total; None when total is 0."""
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"wilson_interval: need 0 <= successes <= total, got {successes}/{total}")
    if not 0 < confidence < 1:
        raise ValueError(f"wilson_interval: confidence must be in (0, 1), got {confidence}")
    if total == 0:
        return None
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # The bounds are exactly 0 and 1 at the extremes; rounding would otherwise put them a hair outside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high


def mcnemar(b: int, c: int) -> dict[str, float | int]:
    """McNemar's test from the discordant counts b (first right, second wrong) and c (the reverse).

    exact_p: two-sided exact conditional p, min(1, 2 P(X <= min(b, c))) with X ~ Bin(b + c, 1/2);
    mid_p: the same less P(X = min(b, c)). Both are 1 when there are no discordant pairs."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar: discordant counts must be >= 0, got b={b}, c={c}")
    n, low = b + c, min(b, c)
    if n == 0:
        return {"b": b, "c": c, "exact_p": 1.0, "mid_p": 1.0}
    exact = min(1.0, 2.0 * float(binom.cdf(low, n, 0.5)))
    mid = min(1.0, 2.0 * (float(binom.cdf(low, n, 0.5)) - 0.5 * float(binom.pmf(low, n, 0.5))))
    return {"b": b, "c": c, "exact_p": exact, "mid_p": mid}


def discordant_pairs(first: Mapping[str, int], second: Mapping[str, int]) -> tuple[int, int]:
    """(b, c): items the first method got right and the second wrong, and the reverse. Both
    mappings are {item key: 0/1} over the same keys."""
    if set(first) != set(second):
        only = sorted(set(first) ^ set(second))
        raise ValueError(f"discordant_pairs: the two methods were judged on different items "
                         f"({len(only)} unpaired, e.g. {only[:3]})")
    b = sum(1 for k in first if first[k] and not second[k])
    c = sum(1 for k in first if second[k] and not first[k])
    return b, c
