"""Stage S6e-S6f: global emotion circuits from sublayer influence and component rankings, and their
cross-emotion overlap.

Budget: transferred from the original model by method.md §8 (`Settings.budget = "transferred"`) or
the literal 560 = 392 + 168 ("literal"); the split is fixed 70/30 or "auto" (D9). Each layer takes
its top-k neurons by C_mean (S4a) and top-k heads by mean importance (S4b) with the "analytic"
ranking, or its top-k by the exact causal scans of the causal stage (§14.2) with `--circuit_ranking=
causal`; the budget and allocation are the same either way. When the causal scan has run, the ranking
not chosen is built too, into `other_ranking/`, so the two can be compared downstream.

Outputs in `<run>/circuit/`:
    <emotion>.json       the official circuit layout (+ allocation log, budget rule, model hash)
    other_ranking/<emotion>.json  the other ranking's circuits (only when the causal scan has run)
    overlap.json         Jaccard and overlap-coefficient matrices (canonical emotion order) and their
                         means over the 15 pairs, for neurons and heads (S6f, D21)
    circuit_<emotion>.png  the circuit map: heads per layer, neurons per layer, influence per layer
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from emojax.circuit import Budget, Circuit, build_circuit, jaccard, literal_budget, mean_pairwise, \
    overlap_coefficient, pairwise, transferred_budget
from emojax.data import EMOTIONS
from emojax.evaluation import figures
from emojax.model.config import ModelConfig
from emojax.runs import InputError, hash_path, write_json
from emojax.runs.stage_record import finished_summary, mark_finished, model_hash
from emojax.stages import upstream
from emojax.stages.context import StageContext

STAGE = "circuit"
RATIO_FIXED = "0.7,0.3"
RANKINGS = ("analytic", "causal")
OTHER_RANKING_DIR = "other_ranking"


def ranking_scores(ctx: StageContext, ranking: str) -> tuple[np.ndarray, np.ndarray]:
    """(neuron scores [6, L, F], head scores [6, L, H]) that rank each layer's components."""
    if ranking == "analytic":
        return upstream.neuron_scores(ctx), upstream.head_scores(ctx)
    if ranking == "causal":
        if not ctx.run.is_done("causal"):
            raise InputError("--circuit_ranking=causal needs the causal scans: run the pipeline with --causal "
                             "(or a preset with causal_prompts > 0)")
        return upstream.causal_rankings(ctx)
    raise InputError(f"circuit ranking {ranking!r}; expected one of {', '.join(RANKINGS)}")


def rankings(ctx: StageContext) -> tuple[str, str | None]:
    """(the chosen ranking, the other one when its scores exist, else None)."""
    chosen = ctx.settings.circuit_ranking
    other = next(r for r in RANKINGS if r != chosen) if chosen in RANKINGS else None
    return chosen, other if other == "analytic" or ctx.run.is_done("causal") else None


def budget_for(config: ModelConfig, rule: str) -> Budget:
    """The §8 transferred budget or the literal original one."""
    if rule == "transferred":
        return transferred_budget(config)
    if rule == "literal":
        return literal_budget()
    raise ValueError(f"budget rule {rule!r}; expected 'transferred' or 'literal'")


def build_all(influence: np.ndarray, neuron_scores: np.ndarray, head_scores: np.ndarray, budget: Budget,
              ratio_mode: str) -> dict[str, tuple[Circuit, dict[str, Any]]]:
    """Circuit and record per emotion. influence [6, 2, L] (kind 0 attention, 1 MLP, mean over alpha);
    neuron_scores [6, L, F]; head_scores [6, L, H]."""
    return {emotion: build_circuit(emotion, influence[e, 0], influence[e, 1], neuron_scores[e],
                                   head_scores[e], budget, ratio_mode)
            for e, emotion in enumerate(EMOTIONS)}


def overlap(circuits: Mapping[str, Circuit]) -> dict[str, Any]:
    """Jaccard (the paper's statistic) and overlap coefficient, matrix and pair mean, per kind."""
    result: dict[str, Any] = {"emotions": list(circuits)}
    for kind, members in (("neurons", {e: c.neuron_set() for e, c in circuits.items()}),
                          ("heads", {e: c.head_set() for e, c in circuits.items()})):
        result[kind] = {
            "jaccard_mean": mean_pairwise(members, jaccard),
            "overlap_coefficient_mean": mean_pairwise(members, overlap_coefficient),
            "jaccard": pairwise(members, jaccard)[1].tolist(),
            "overlap_coefficient": pairwise(members, overlap_coefficient)[1].tolist(),
            "shared_by_all": sorted(map(list, set.intersection(*members.values()))) if members else [],
        }
    return result


def fingerprint(ctx: StageContext) -> dict[str, Any]:
    inputs = {name: hash_path(ctx.run.path / stage / file) for name, stage, file in (
        ("influence", "sublayer", "influence.npz"), ("neurons", "components", "neuron_stats.npz"),
        ("heads", "components", "head_stats.npz"))}
    causal = ctx.run.path / "causal" / "causal_scores.npz"
    inputs["causal"] = hash_path(causal) if ctx.run.is_done("causal") and causal.is_file() else None
    return {"stage": STAGE, "model": model_hash(ctx), "inputs": inputs, "budget": ctx.settings.budget,
            "ratio_mode": ctx.settings.ratio_mode, "ranking": ctx.settings.circuit_ranking}


def run(ctx: StageContext) -> dict[str, Any]:
    """Build, write and plot the six circuits and their overlap statistics."""
    influence = upstream.influence(ctx)
    chosen, other = rankings(ctx)
    scores = {r: ranking_scores(ctx, r) for r in (chosen, other) if r is not None}
    stamp = fingerprint(ctx)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    cfg = ctx.config
    budget = budget_for(cfg, ctx.settings.budget)
    every = {r: build_all(influence, *scores[r], budget, ctx.settings.ratio_mode) for r in scores}
    for ranking, built in every.items():
        directory = out if ranking == chosen else out / OTHER_RANKING_DIR
        directory.mkdir(exist_ok=True)
        for e, (emotion, (circuit, record)) in enumerate(built.items()):
            if ctx.settings.ratio_mode == "fixed":
                record["ratio_fixed"] = RATIO_FIXED
            record.update({"budget_rule": ctx.settings.budget, "ranking": ranking, "model_hash": model_hash(ctx),
                           "model_name": ctx.model.name})
            write_json(directory / f"{emotion}.json", _official_key_order(record))
            if ranking == chosen:
                figures.circuit_map(out / f"circuit_{emotion}.png", circuit, influence[e], n_heads=cfg.n_heads,
                                    title=f"{emotion} circuit ({ctx.model.name}, {ranking} ranking)")
    built = every[chosen]
    stats = overlap({emotion: circuit for emotion, (circuit, _) in built.items()})
    write_json(out / "overlap.json", stats)
    summary = {"stage": STAGE, "ranking": chosen, "other_ranking": other,
               "budget": {"rule": ctx.settings.budget, "neurons": budget.neurons, "heads": budget.heads,
                          "min_neurons": budget.min_neurons, "min_heads": budget.min_heads},
               "ratio_mode": ctx.settings.ratio_mode,
               "sizes": {e: {"neurons": len(c.neuron_set()), "heads": len(c.head_set())}
                         for e, (c, _) in built.items()},
               "overlap": {"neurons": stats["neurons"]["jaccard_mean"], "heads": stats["heads"]["jaccard_mean"]},
               "overlap_coefficient": {"neurons": stats["neurons"]["overlap_coefficient_mean"],
                                       "heads": stats["heads"]["overlap_coefficient_mean"]}}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary


_OFFICIAL_ORDER = ("emotion", "K_total", "ratio_mode", "ratio_fixed", "K_alloc", "min_per_layer", "cap_ratio",
                   "summary", "layers")


def _official_key_order(record: dict[str, Any]) -> dict[str, Any]:
    """The published files' key order first, then emojax's additions (allocation log, provenance)."""
    ordered = {k: record[k] for k in _OFFICIAL_ORDER if k in record}
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    return ordered
