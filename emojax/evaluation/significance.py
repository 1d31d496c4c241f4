"""Intervals and paired tests of the three-way comparison (test split), from judged outputs.

    cell_intervals(cell)        Wilson 95% intervals of a table cell's judged and fluent accuracy
    paired_test(first, second)  McNemar on two methods' fluent_match outcomes over the same items
    fluent_fraction(cell)       the share of fluent replies in a cell

Cells are the accuracy-table cells of `emojax.evaluation.accuracy` (total, matched, fluent,
fluent_matched); records are the §3.3 dicts with judge.fluent_match.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from emojax.evaluation.outcomes import fluent_match
from emojax.evaluation.stats import discordant_pairs, mcnemar, wilson_interval
from emojax.runs import InputError

FLUENT_FIELDS = ("fluent", "fluent_matched")


def _count(cell: Mapping[str, Any], field: str, source: str) -> int:
    try:
        return int(cell[field])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{source}: an accuracy cell has no {field!r} count (the fluency fields of the judged "
                         f"loop are missing)") from None


def cell_intervals(cell: Mapping[str, Any], source: str) -> dict[str, list[float] | None]:
    """{"accuracy": [low, high], "fluent_accuracy": [low, high]} as fractions (None for an empty cell)."""
    total = _count(cell, "total", source)
    out = {}
    for name, field in (("accuracy", "matched"), ("fluent_accuracy", "fluent_matched")):
        interval = wilson_interval(_count(cell, field, source), total)
        out[name] = None if interval is None else [round(interval[0], 6), round(interval[1], 6)]
    return out


def fraction(cell: Mapping[str, Any], field: str, source: str) -> float | None:
    """cell[field] / cell["total"], None for an empty cell."""
    total = _count(cell, "total", source)
    return _count(cell, field, source) / total if total else None


def outcomes(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{item key: judge.fluent_match}."""
    return {r["key"]: fluent_match(r) for r in records}


def paired_test(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """McNemar on fluent_match of two methods judged on the same items: b (first only), c (second
    only), the exact conditional and mid-p two-sided p-values, and the number of pairs."""
    a, b = outcomes(first), outcomes(second)
    discordant = discordant_pairs(a, b)
    return {**mcnemar(*discordant), "pairs": len(a), "outcome": "fluent_match"}
