"""Record subsets: the SEV cross-fit folds (method.md §3.2, [D17]) and theme-stratified samples.

Cross-fit: with no evaluation split supplied, fold A is scenarios 00–09 of every theme and fold B is
scenarios 10–19; everything is derived on one fold and evaluated on the other, both ways round.
Results obtained this way are "SEV cross-fit" numbers, not comparable to the headline numbers.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Iterable, Sequence

from emojax.data.sev import DatasetError, SevRecord

FOLDS: tuple[str, ...] = ("A", "B")
_SCENARIO_NUMBER = re.compile(r"_(\d+)$")


def scenario_number(record: SevRecord) -> int:
    """The NN of a `<prefix>_<NN>` skeleton_id."""
    match = _SCENARIO_NUMBER.search(record.skeleton_id)
    if match is None:
        raise DatasetError(f"skeleton_id {record.skeleton_id!r} does not end in _<NN>",
                           field="skeleton_id")
    return int(match.group(1))


def fold_of(record: SevRecord) -> str:
    """"A" for scenarios 00–09, "B" for 10–19."""
    number = scenario_number(record)
    if not 0 <= number <= 19:
        raise DatasetError(f"skeleton_id {record.skeleton_id!r}: the cross-fit folds cover "
                           "scenario numbers 00-19 only", field="skeleton_id")
    return FOLDS[number // 10]


def cross_fit_folds(records: Iterable[SevRecord]) -> dict[str, tuple[SevRecord, ...]]:
    """{"A": records 00–09, "B": records 10–19}, each in input order."""
    folds: dict[str, list[SevRecord]] = {f: [] for f in FOLDS}
    for r in records:
        folds[fold_of(r)].append(r)
    for name, members in folds.items():
        if not members:
            raise DatasetError(f"cross-fit fold {name} is empty: the dataset needs scenarios "
                               "numbered both 00-09 and 10-19")
    return {name: tuple(members) for name, members in folds.items()}


@dataclasses.dataclass(frozen=True)
class CrossFitRound:
    """Derive every analysis artefact on `derive`, evaluate generation on `evaluate`."""

    name: str
    derive: tuple[SevRecord, ...]
    evaluate: tuple[SevRecord, ...]


def cross_fit_rounds(records: Iterable[SevRecord]) -> tuple[CrossFitRound, CrossFitRound]:
    """The two rounds of the cross-fit: derive on A and evaluate on B, then the reverse."""
    folds = cross_fit_folds(records)
    return (CrossFitRound("derive A, evaluate B", folds["A"], folds["B"]),
            CrossFitRound("derive B, evaluate A", folds["B"], folds["A"]))


def subsample(records: Sequence[SevRecord], per_theme: int, *, seed: int | None = None
              ) -> tuple[SevRecord, ...]:
    """`per_theme` records of every theme, in input order, for quick presets.

    With `seed=None` the pick is evenly spaced through each theme (for 20 scenarios and an even
    `per_theme` this takes as many from fold A as from fold B); with an integer seed it is a
    uniform random sample per theme, reproducible across platforms and Python versions.
    """
    if per_theme < 1:
        raise ValueError(f"per_theme must be >= 1, got {per_theme}")
    by_theme: dict[str, list[int]] = {}
    for index, r in enumerate(records):
        by_theme.setdefault(r.theme, []).append(index)
    chosen: list[int] = []
    for theme, indices in by_theme.items():
        n = len(indices)
        if per_theme > n:
            raise DatasetError(f"theme {theme!r} has {n} records, fewer than per_theme={per_theme}")
        if seed is None:
            positions = [(i * n) // per_theme for i in range(per_theme)]
        else:
            positions = random.Random(f"{seed}:{theme}").sample(range(n), per_theme)
        chosen.extend(indices[p] for p in positions)
    return tuple(records[i] for i in sorted(chosen))
