"""Check a judge against careful reading on a run's own replies: a stratified blind sample, then its figures.

The offline judge was fitted on other models' replies, so on a new model its rates are a claim to check.
`draw_sample` picks, from the judged records of some stages, up to `per_stratum` replies of every stratum
(stage x target emotion x the judge's fluent_match verdict, seeded) and splits them into a blind file to
read (id, target, scenario, event, text: shuffled, no verdict, no stage) and a key (the stage, the record's
key, the judge's verdicts, the stratum's population and sample size). A reader fills match / fluent per
`../shared/data/labels/rubric.md`; `score_sample` then weighs every read reply by its stratum's population
over its sample size, so each figure estimates the whole stage:

- agreement (with a 95% interval, as below) and Cohen's kappa of the judge's fluent_match (and match) with
  the reading's;
- the judged fluent_match rate (exact: every record of the stage) against the read rate's stratified
  estimate, with a 95% interval (normal approximation of the stratified estimator, each stratum's
  variance from (x + 1) / (n + 2) and its finite-population correction).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emojax.runs import InputError
from emojax.runs.validate import numbered_objects

VERDICTS = ("match", "fluent", "fluent_match")
Z95 = 1.959963984540054
Stratum = tuple[str, str, int]  # (stage, target emotion, the judge's fluent_match)


def _check_verdicts(judge: Any, where: str) -> None:
    if not isinstance(judge, dict) or any(judge.get(v) not in (0, 1) for v in VERDICTS):
        raise InputError(f"{where}: field 'judge' needs 0/1 {', '.join(VERDICTS)}; got {judge}")


def strata_of(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[Stratum, list[int]]:
    """{stratum: indices of its records within their stage} of every stage's judged records."""
    strata: dict[Stratum, list[int]] = {}
    for stage, rows in records.items():
        for i, record in enumerate(rows):
            strata.setdefault((stage, record["emotion"], int(record["judge"]["fluent_match"])), []).append(i)
    return strata


def key_stratum(row: Mapping[str, Any]) -> Stratum:
    return row["stage"], row["emotion"], int(row["judge"]["fluent_match"])


def load_stage_records(run_dir: Path, stages: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """{stage: its judged records} from `<run_dir>/<stage>/records.jsonl`, every field the sample needs checked."""
    out = {}
    for stage in stages:
        path = run_dir / stage / "records.jsonl"
        if not path.is_file():
            present = sorted(p.parent.name for p in run_dir.glob("*/records.jsonl"))
            raise InputError(f"{path}: not found; stages with records in {run_dir}: {', '.join(present) or 'none'}")
        records = []
        for line, record in numbered_objects(path):
            for field in ("key", "emotion", "scenario", "event", "gen_text", "judge"):
                if field not in record:
                    raise InputError(f"{path} line {line}: field {field!r} is missing")
            _check_verdicts(record["judge"], f"{path} line {line}")
            records.append(record)
        out[stage] = records
    return out


def draw_sample(records: Mapping[str, Sequence[Mapping[str, Any]]], per_stratum: int, seed: int
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(blind rows to read, key rows): up to `per_stratum` records per (stage, emotion, judged fluent_match)."""
    if per_stratum < 1:
        raise ValueError(f"draw_sample: per_stratum must be at least 1, got {per_stratum}")
    rng = np.random.default_rng(seed)
    picked = []
    for (stage, _, _), members in sorted(strata_of(records).items()):
        chosen = np.sort(rng.choice(len(members), min(per_stratum, len(members)), replace=False))
        picked += [(stage, members[j], len(members), len(chosen)) for j in chosen]
    blind, key = [], []
    for n, j in enumerate(rng.permutation(len(picked))):
        stage, i, population, sampled = picked[j]
        record = records[stage][i]
        rid = f"R{n:04d}"
        blind.append({"id": rid, "target": record["emotion"], "scenario": record["scenario"],
                      "event": record["event"], "text": record["gen_text"]})
        key.append({"id": rid, "stage": stage, "key": record["key"], "emotion": record["emotion"],
                    "judge": {v: int(record["judge"][v]) for v in VERDICTS},
                    "stratum_population": population, "stratum_sampled": sampled})
    return blind, key


def read_readings(path: Path, key: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """{id: {match, fluent, fluent_match}} of a readings file; every key id read exactly once, values 0/1."""
    if not path.is_file():
        raise InputError(f"{path}: no readings yet; write one {{\"id\", \"match\": 0/1, \"fluent\": 0/1}} per line "
                         "for every row of to_read.jsonl")
    wanted = {row["id"] for row in key}
    out: dict[str, dict[str, int]] = {}
    for line, row in numbered_objects(path):
        rid = row.get("id")
        if rid not in wanted:
            raise InputError(f"{path} line {line}: id {rid!r} is not in the sample's key")
        if rid in out:
            raise InputError(f"{path} line {line}: id {rid!r} is read twice")
        for field in ("match", "fluent"):
            if row.get(field) not in (0, 1):
                raise InputError(f"{path} line {line}: field {field!r} must be 0 or 1, got {row.get(field)!r}")
        out[rid] = {"match": row["match"], "fluent": row["fluent"], "fluent_match": row["match"] * row["fluent"]}
    missing = sorted(wanted - set(out))
    if missing:
        raise InputError(f"{path}: {len(missing)} sampled replies are not read yet, e.g. {', '.join(missing[:5])}")
    return out


KEY_FIELDS = ("id", "stage", "key", "emotion", "judge", "stratum_population", "stratum_sampled")


def read_key(path: Path) -> list[dict[str, Any]]:
    """The rows of a sample's key.jsonl, each field present, ids unique and every stratum's counts consistent."""
    if not path.is_file():
        raise InputError(f"{path}: no sample drawn here; run without --score first")
    rows, seen = [], set()
    strata: dict[Stratum, list[tuple[int, int, int]]] = {}
    for line, row in numbered_objects(path):
        for field in KEY_FIELDS:
            if field not in row:
                raise InputError(f"{path} line {line}: field {field!r} is missing")
        _check_verdicts(row["judge"], f"{path} line {line}")
        if row["id"] in seen:
            raise InputError(f"{path} line {line}: id {row['id']!r} appears twice")
        seen.add(row["id"])
        strata.setdefault(key_stratum(row), []).append((line, row["stratum_population"], row["stratum_sampled"]))
        rows.append(row)
    for stratum, members in strata.items():
        line, population, sampled = members[0]
        if any((p, s) != (population, sampled) for _, p, s in members) or sampled != len(members) or population < sampled:
            raise InputError(f"{path} line {line}: stratum {stratum} holds {len(members)} rows, but its rows say "
                             f"{sampled} sampled of {population}; the key was edited")
    return rows


def check_key_matches(key: Sequence[Mapping[str, Any]], records: Mapping[str, Sequence[Mapping[str, Any]]],
                      where: Path) -> None:
    """Refuse a key whose strata no longer have the populations the stage's records give (re-judged, resumed)."""
    counts = {stratum: len(members) for stratum, members in strata_of(records).items()}
    for row in key:
        stratum = key_stratum(row)
        if counts.get(stratum) != row["stratum_population"]:
            raise InputError(f"{where}: stratum {stratum} had {row['stratum_population']} replies at the draw, the "
                             f"run's records now hold {counts.get(stratum, 0)}; the stage changed since the draw: "
                             "draw a new sample into another folder")


def stratified_rate(read: np.ndarray, strata: np.ndarray, population: np.ndarray) -> tuple[float, float, float]:
    """(estimate, low, high) of a rate from a stratified sample: strata ids, each row's stratum population."""
    if len(read) == 0:
        raise ValueError("stratified_rate: no rows read")
    estimate, variance, total = 0.0, 0.0, 0
    for stratum in np.unique(strata):
        rows = strata == stratum
        n, big_n, x = int(rows.sum()), int(population[rows][0]), int(read[rows].sum())
        if big_n < n:
            raise ValueError(f"stratified_rate: stratum {str(stratum)!r} has {n} rows read but a population of {big_n}")
        total += big_n
        estimate += big_n * x / n
        smoothed = (x + 1) / (n + 2)
        variance += big_n ** 2 * (1 - n / big_n) * smoothed * (1 - smoothed) / n
    half = Z95 * math.sqrt(variance) / total
    estimate /= total
    return estimate, max(0.0, estimate - half), min(1.0, estimate + half)


def weighted_agreement(truth: np.ndarray, pred: np.ndarray, weight: np.ndarray) -> tuple[float, float | None]:
    """(agreement, Cohen's kappa) with each row weighted; kappa is None where it is undefined (both constant)."""
    w = np.asarray(weight, np.float64) / np.sum(weight)
    agreement = float(np.sum(w * (truth == pred)))
    p_t, p_p = (float(np.clip(np.sum(w * x), 0.0, 1.0)) for x in (truth, pred))
    chance = p_t * p_p + (1 - p_t) * (1 - p_p)
    if np.isclose(chance, 1.0, rtol=0.0, atol=1e-12):
        return agreement, None
    return agreement, (agreement - chance) / (1 - chance)


def score_sample(key: Sequence[Mapping[str, Any]], readings: Mapping[str, Mapping[str, int]],
                 records: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Figures per stage (see the module docstring); `records` gives each stage's exact judged rate."""
    out: dict[str, Any] = {}
    for stage in sorted({row["stage"] for row in key}):
        rows = [row for row in key if row["stage"] == stage]
        weight = np.array([row["stratum_population"] / row["stratum_sampled"] for row in rows])
        strata = np.array([str(key_stratum(row)) for row in rows])
        population = np.array([row["stratum_population"] for row in rows])
        figures: dict[str, Any] = {"read": len(rows), "replies": len(records[stage])}
        for verdict in ("fluent_match", "match"):
            judged = np.array([row["judge"][verdict] for row in rows])
            read = np.array([readings[row["id"]][verdict] for row in rows])
            agreement, kappa = weighted_agreement(read, judged, weight)
            _, agree_low, agree_high = stratified_rate((read == judged).astype(int), strata, population)
            rate, low, high = stratified_rate(read, strata, population)
            judged_rate = float(np.mean([r["judge"][verdict] for r in records[stage]]))
            figures[verdict] = {"agreement": round(agreement, 4),
                                "agreement_interval": [round(agree_low, 4), round(agree_high, 4)],
                                "kappa": None if kappa is None else round(kappa, 4),
                                "judged_rate": round(judged_rate, 4), "read_rate": round(rate, 4),
                                "read_interval": [round(low, 4), round(high, 4)],
                                "judged_inside_interval": bool(low <= judged_rate <= high)}
        out[stage] = figures
    return out


def markdown_table(figures: Mapping[str, Any]) -> str:
    """The fluent_match figures of `score_sample`, one row per stage."""
    lines = ["| stage | replies (read) | fluent_match agreement [95%] (κ) | judged rate | read rate [95%] |",
             "|---|---|---|---|---|"]
    for stage, f in figures.items():
        fm = f["fluent_match"]
        (a_low, a_high), (low, high) = fm["agreement_interval"], fm["read_interval"]
        kappa = "–" if fm["kappa"] is None else f"{fm['kappa']:.2f}"
        lines.append(f"| {stage} | {f['replies']} ({f['read']}) | {100 * fm['agreement']:.1f}% [{100 * a_low:.1f}, "
                     f"{100 * a_high:.1f}] ({kappa}) | {100 * fm['judged_rate']:.1f}% | "
                     f"{100 * fm['read_rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] |")
    return "\n".join(lines)
