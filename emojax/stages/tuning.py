"""One tuning protocol for steering's alpha and circuit modulation's lambda, on the TRAIN split (D17).

Rule (`SearchRule`): start from a geometric grid around the method's reference dose (ratio 2, one
point below and one above); evaluate every dose on the same train items; while the best dose of a
tuned curve sits at an edge of the grid, add the next geometric point beyond that edge, up to
`max_extensions` times. The objective is fluent accuracy, the fraction of items whose reply the
judge matched AND found fluent (`record["judge"]["fluent_match"]`); ties go to the dose closest in
ratio to the reference, then to the smaller one. With per-emotion doses every emotion's curve is
tuned (and bracketed) on its own; otherwise only the overall curve is.

`run_tuning` is the stage both methods share: it draws the train subsample (evenly spaced
(scenario, valence) groups, so every emotion gets the same prompts), batches all doses of one
search step into one resumable generation (rows = dose x item), writes per-dose records and the
curves, and marks the stage done.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from absl import logging

from emojax.data import EMOTIONS, Group, Item, SevRecord, groups as all_groups
from emojax.evaluation import figures
from emojax.evaluation.accuracy import accuracy_tables
from emojax.evaluation.outcomes import fluent, fluent_match
from emojax.runs import InputError, write_csv, write_json
from emojax.runs.stage_record import finished_summary, mark_finished
from emojax.stages.context import StageContext
from emojax.stages.judged import write_judged_outputs

CURVES = ("overall",) + EMOTIONS
MEASURES = ("fluent_accuracy", "fluent_fraction", "accuracy")


@dataclasses.dataclass(frozen=True)
class SearchRule:
    """The geometric grid and how far it may grow (in steps of one point beyond an edge)."""

    ratio: float = 2.0
    below: int = 1
    above: int = 1
    max_extensions: int = 3

    def __post_init__(self) -> None:
        if self.ratio <= 1 or self.below < 0 or self.above < 0 or self.max_extensions < 0:
            raise ValueError(f"SearchRule needs ratio > 1 and non-negative counts, got {self}")

    def describe(self) -> str:
        return (f"geometric grid reference x {self.ratio:g}^k, k = -{self.below}..{self.above}; while a tuned "
                f"curve's best dose is at an edge, add the next point beyond it (at most {self.max_extensions} "
                f"times); objective: fluent accuracy (judge.fluent_match) on the train split; ties: closest "
                f"in ratio to the reference, then the smaller dose")


def rule_for(preset: Any) -> SearchRule:
    """The preset's rule: the default grid, extended at most `preset.tune_extensions` times."""
    return SearchRule(max_extensions=preset.tune_extensions)


def round_dose(dose: float) -> float:
    return round(float(dose), 4)


def initial_grid(reference: float, rule: SearchRule) -> list[float]:
    if not math.isfinite(reference) or reference <= 0:
        raise InputError(f"the reference dose must be a positive number, got {reference}")
    return [round_dose(reference * rule.ratio ** k) for k in range(-rule.below, rule.above + 1)]


def choose(curve: Mapping[float, float | None], reference: float) -> float:
    """The dose with the highest score; ties (and an all-empty curve) go to the dose closest in
    ratio to `reference`, then to the smaller dose."""
    scores = {d: -math.inf if s is None else s for d, s in curve.items()}
    top = max(scores.values())
    return min((d for d, s in scores.items() if s == top), key=lambda d: (abs(math.log(d / reference)), d))


Evaluate = Callable[[Sequence[float]], Mapping[float, Mapping[str, float | None]]]


def search(evaluate: Evaluate, reference: float, rule: SearchRule, tuned: Sequence[str] = ("overall",)
           ) -> dict[str, Any]:
    """Run the rule. `evaluate(doses)` scores new doses: {dose: {curve name: objective or None}}.

    Returns {grid, scores {dose: {name: score}}, best {name: dose}, bracketed {name: bool}, extensions}."""
    scores: dict[float, Mapping[str, float | None]] = dict(evaluate(initial_grid(reference, rule)))
    extensions = 0
    while True:
        grid = sorted(scores)
        best = {name: choose({d: scores[d][name] for d in grid}, reference) for name in tuned}
        beyond = set()
        for dose in best.values():
            if dose == grid[0]:
                beyond.add(round_dose(grid[0] / rule.ratio))
            if dose == grid[-1]:
                beyond.add(round_dose(grid[-1] * rule.ratio))
        if not beyond or extensions == rule.max_extensions:
            break
        logging.info("tuning: best dose at an edge of %s; extending to %s", grid, sorted(beyond))
        scores.update(evaluate(sorted(beyond)))
        extensions += 1
    return {"grid": grid, "scores": {d: dict(scores[d]) for d in grid}, "best": best,
            "bracketed": {name: grid[0] < dose < grid[-1] for name, dose in best.items()},
            "extensions": extensions}


def _fraction(values: Sequence[int]) -> float | None:
    return sum(values) / len(values) if values else None


def measures(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """{measure: {"overall" and each emotion: fraction}} for fluent accuracy, fluent fraction and
    judged accuracy."""
    extract = {"fluent_accuracy": fluent_match, "fluent_fraction": fluent,
               "accuracy": lambda r: int(r["judge"]["match"])}
    out = {}
    for name, value in extract.items():
        per = {"overall": _fraction([value(r) for r in records])}
        per.update({e: _fraction([value(r) for r in records if r["emotion"] == e]) for e in EMOTIONS})
        out[name] = per
    return out


# ---------------------------------------------------------------------------------------------
# The shared tuning stage


def spread_groups(records: Sequence[SevRecord], count: int | None) -> list[Group]:
    """`count` (scenario, valence) groups evenly spaced over the split (every group when None)."""
    chosen = all_groups(records)
    if count is None or count >= len(chosen):
        return chosen
    if count < 1:
        raise InputError(f"the tuning subsample needs at least one group, got {count}")
    picks = np.unique(np.linspace(0, len(chosen) - 1, count).round().astype(int))
    return [chosen[i] for i in picks]


# generate(directory, row items, row -> index into doses, doses, job name) -> §3.3 records of the rows, in order.
Generate = Callable[[Path, Sequence[Item], np.ndarray, Sequence[float], str], list[dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Method:
    """What differs between the tuned methods: names, the reference dose and the generation."""

    stage: str
    name: str           # "steering" or "circuit"
    dose_name: str      # "alpha" or "lambda"
    reference: float
    generate: Generate


def run_tuning(ctx: StageContext, method: Method, stamp: Mapping[str, Any], rule: SearchRule,
               train_groups: Sequence[Group]) -> dict[str, Any]:
    """The search on the train groups; per-dose records under `<stage>/<dose name>_<dose>/`,
    sweep.json, sweep.csv and a curve plot. Returns the stage summary."""
    per_emotion = ctx.settings.per_emotion_dose
    stamp = {**stamp, "rule": dataclasses.asdict(rule), "per_emotion": per_emotion}
    done = finished_summary(ctx.run, method.stage, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(method.stage)
    items = [item for group in train_groups for item in group.items]
    per_dose: dict[float, dict[str, Any]] = {}

    def evaluate(doses: Sequence[float]) -> dict[float, dict[str, float | None]]:
        logging.info("%s tuning on train: %s %s (%d items each)", method.name, method.dose_name, list(doses),
                     len(items))
        rows = np.repeat(np.arange(len(doses)), len(items))
        records = method.generate(out, [i for _ in doses for i in items], rows, doses,
                                  f"doses-{'_'.join(f'{d:g}' for d in doses)}")
        for index, dose in enumerate(doses):
            mine = records[index * len(items):(index + 1) * len(items)]
            for record in mine:
                record["meta"][method.dose_name] = dose
            sub = out / f"{method.dose_name}_{dose:g}"
            sub.mkdir(exist_ok=True)
            write_judged_outputs(sub, mine, accuracy_tables(mine),
                                 f"{method.name}, train split, {method.dose_name} {dose:g}")
            per_dose[dose] = measures(mine)
        return {d: per_dose[d]["fluent_accuracy"] for d in doses}

    result = search(evaluate, method.reference, rule, tuned=EMOTIONS if per_emotion else ("overall",))
    grid = result["grid"]
    curves = {m: {name: [per_dose[d][m][name] for d in grid] for name in CURVES} for m in MEASURES}
    per_emotion_best = {e: choose(dict(zip(grid, curves["fluent_accuracy"][e])), method.reference) for e in EMOTIONS}
    best = choose(dict(zip(grid, curves["fluent_accuracy"]["overall"])), method.reference)
    summary = {"stage": method.stage, "method": method.name, "split": "train", "dose": method.dose_name,
               "items": len(items), "groups": [g.key for g in train_groups], "reference": method.reference,
               "rule": rule.describe(), "objective": "fluent accuracy (judge.fluent_match)", "grid": grid,
               "curves": curves, "best": best, "per_emotion_best": per_emotion_best,
               "per_emotion_used": per_emotion, "bracketed": result["bracketed"], "extensions": result["extensions"]}
    write_json(out / "sweep.json", summary)
    write_csv(out / "sweep.csv", [{method.dose_name: d, **{f"{m}_{name}": curves[m][name][i]
                                                           for m in MEASURES for name in CURVES}}
                                  for i, d in enumerate(grid)])
    figures.dose_curves(out / "tuning.png", grid, curves["fluent_accuracy"], best, method.dose_name,
                        f"{method.name}: fluent accuracy on the train split ({len(items)} items)")
    mark_finished(ctx.run, method.stage, stamp, summary)
    return summary


def chosen_doses(summary: Mapping[str, Any] | None, fixed: float, per_emotion: bool) -> np.ndarray:
    """The dose per emotion [6]: the tuned one(s) when the tuning ran, else `fixed` for every emotion."""
    if summary is None:
        return np.full(len(EMOTIONS), fixed, np.float64)
    if per_emotion:
        return np.asarray([summary["per_emotion_best"][e] for e in EMOTIONS], np.float64)
    return np.full(len(EMOTIONS), summary["best"], np.float64)


def dose_record(doses: Iterable[float], per_emotion: bool) -> float | dict[str, float]:
    """A dose as summary.json shows it: one number, or {emotion: dose} with per-emotion doses."""
    doses = [float(d) for d in doses]
    return dict(zip(EMOTIONS, doses)) if per_emotion else doses[0]
