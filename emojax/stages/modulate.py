"""Stage S7: circuit modulation, the neutral baseline, and the modulation-scale sweep.

Circuit modulation adds lambda_e * Delta_e to the circuit's components while the model answers the
neutral prompt (method.md S7): the head slices z_{l,h} get lambda_e * Delta^attn at every real position
(P_all, `head_where="all"`) and the neurons a_{l,j} get lambda_e * Delta^mlp at t* and every generated
token (P_last, `neuron_where="from_last"`), the D10 asymmetry. These component edits equal adding the
residual vectors u^attn and u^mlp to the branch outputs (§2.5). The six emotions of a group share
their prompt, so they batch together as rows with per-row edits ([L, B, ...] fields).

Stages:
    modulate_test         every test item, its emotion's circuit, §6 "circuit" decoding, judged
    baseline_test         one unmodified generation per test group, judged against each of the six
                          targets: the judge's false-match rate per emotion (§14.6)
    modulate_sweep_train  optional: the scale grid on the TRAIN split (never on the evaluation split,
                          D17); reports the best scale overall and per emotion
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emojax.circuit import Circuit
from emojax.config import ModelConfig
from emojax.data import EMOTIONS, Item, groups as all_groups, items as all_items, subsample
from emojax.hparams import modulation_scale
from emojax.interventions import Intervention
from emojax.prompts import neutral_messages
from emojax.runs import InputError, hash_path, write_json
from emojax.stages import figures, upstream
from emojax.stages.accuracy import accuracy_tables, overall_fraction
from emojax.stages.context import StageContext
from emojax.stages.judged import (decoding_for, digest, finished_summary, fluency_in_chunks, generate_in_chunks,
                                  item_record, judge_identity, judge_in_chunks, mark_finished, model_hash, record_meta,
                                  records_digest, run_judged_generation, write_judged_outputs)

STAGE = "modulate_test"
BASELINE_STAGE = "baseline_test"
SWEEP_STAGE = "modulate_sweep_train"
SCALE_GRID = (0.5, 0.8, 1.0, 1.5, 2.0)   # method.md §8.2: the sweep for re-tuning lambda on SEV


def emotion_scales(base: float, official: bool) -> np.ndarray:
    """lambda_e [6]: `base`, with the official anger factor 0.8 unless `official` is off (D11)."""
    return np.asarray([modulation_scale(e, base, official) for e in EMOTIONS], np.float32)


def component_edits(circuits: Mapping[str, Circuit], delta_mlp: np.ndarray, delta_attn: np.ndarray,
                    scales: np.ndarray, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(neuron_add [6, L, F], head_add [6, L, H, Dh]): lambda_e * Delta_e on the circuit's members, 0
    elsewhere. delta_mlp [6, L, F]; delta_attn [6, L, H*Dh]."""
    L, H, Dh = config.n_layers, config.n_heads, config.head_dim
    neuron_add = np.zeros((len(EMOTIONS), L, config.d_ff), np.float32)
    head_add = np.zeros((len(EMOTIONS), L, H, Dh), np.float32)
    heads_delta = np.asarray(delta_attn, np.float32).reshape(len(EMOTIONS), L, H, Dh)
    for e, emotion in enumerate(EMOTIONS):
        circuit = circuits[emotion]
        if circuit.n_layers != L:
            raise InputError(f"the {emotion} circuit has {circuit.n_layers} layers; the model has {L}")
        for layer in range(L):
            neurons, heads = list(circuit.neurons[layer]), list(circuit.heads[layer])
            neuron_add[e, layer, neurons] = scales[e] * delta_mlp[e, layer, neurons]
            head_add[e, layer, heads] = scales[e] * heads_delta[e, layer, heads]
    return neuron_add, head_add


def residual_vectors(params: dict[str, Any], neuron_add: np.ndarray, head_add: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(u_attn, u_mlp) [6, L, D]: the branch-output additions the component edits amount to (§2.5)."""
    layers = params["layers"]
    w_o = np.asarray(layers["wo"], np.float32)          # [L, H*Dh, D]
    w_down = np.asarray(layers["w_down"], np.float32)   # [L, F, D]
    flat_heads = head_add.reshape(head_add.shape[0], head_add.shape[1], -1)
    return (np.einsum("elq,lqd->eld", flat_heads, w_o), np.einsum("elf,lfd->eld", neuron_add, w_down))


def row_intervention(neuron_add: np.ndarray, head_add: np.ndarray, emotion_rows: np.ndarray,
                     config: ModelConfig) -> Intervention:
    """Per-row edits for rows of the given emotion indices: neurons on P_last, heads on P_all (D10)."""
    rows = np.asarray(emotion_rows, np.int32)
    return Intervention.identity(config, resid_where="none", neuron_where="from_last", head_where="all").replace(
        neuron_add=np.moveaxis(neuron_add[rows], 0, 1), head_add=np.moveaxis(head_add[rows], 0, 1))


def _modulated_generation(ctx: StageContext, out: Path, items: Sequence[Item], scales: np.ndarray,
                          stamp: Mapping[str, Any], job: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    circuits = upstream.circuits(ctx)
    geometry = upstream.directions(ctx)
    neuron_add, head_add = component_edits(circuits, geometry["delta_mlp"], geometry["delta_attn"], scales,
                                           ctx.config)
    emotion_index = np.asarray([EMOTIONS.index(i.emotion) for i in items], np.int32)
    decoding = decoding_for("circuit", ctx.preset.max_new_tokens, ctx.settings.harmonised)
    return run_judged_generation(
        ctx, out, items, [neutral_messages(i) for i in items], decoding, fingerprint=stamp,
        row_iv=lambda rows: row_intervention(neuron_add, head_add, emotion_index[rows], ctx.config),
        meta={"condition": "circuit", "scales": dict(zip(EMOTIONS, scales.tolist()))}, job=job)


def _fingerprint(ctx: StageContext, stage: str, records: Sequence[Any], scales: np.ndarray | None) -> dict[str, Any]:
    condition = "baseline" if scales is None else "circuit"
    decoding = decoding_for(condition, ctx.preset.max_new_tokens, ctx.settings.harmonised)
    stamp = {"stage": stage, "dataset": records_digest(records), "model": model_hash(ctx),
             "decoding": decoding.to_json(), "judge": judge_identity(ctx.judge), "date": ctx.settings.date_string,
             "batch_size": ctx.preset.batch_size}
    if scales is not None:
        stamp["scales"] = scales.tolist()
        stamp["circuits"] = digest({e: [c.neurons, c.heads] for e, c in upstream.circuits(ctx).items()})
        stamp["directions"] = hash_path(ctx.run.path / "directions" / "directions.npz")
    return stamp


def run(ctx: StageContext) -> dict[str, Any]:
    """Circuit modulation of every test item, judged; accuracy tables."""
    scales = emotion_scales(ctx.settings.modulation_scale, ctx.settings.official_scales)
    stamp = _fingerprint(ctx, STAGE, ctx.test, scales)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    records, tables = _modulated_generation(ctx, out, all_items(ctx.test), scales, stamp, "generate")
    write_judged_outputs(out, records, tables, "Circuit modulation accuracy (test split)")
    summary = {"stage": STAGE, "items": len(records), "scales": dict(zip(EMOTIONS, scales.tolist())),
               "accuracy": tables["overall"], "accuracy_fraction": overall_fraction(tables),
               "per_emotion": {e: c["accuracy"] for e, c in tables["per_emotion"].items()}}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary


def run_baseline(ctx: StageContext) -> dict[str, Any]:
    """One unmodified generation per test group, judged against each of the six emotions."""
    stamp = _fingerprint(ctx, BASELINE_STAGE, ctx.test, None)
    done = finished_summary(ctx.run, BASELINE_STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(BASELINE_STAGE)
    groups = all_groups(ctx.test)
    decoding = decoding_for("baseline", ctx.preset.max_new_tokens, ctx.settings.harmonised)
    # The six emotions of a group share the neutral prompt: generate once, judge against every target.
    prompts = [neutral_messages(g.items[0]) for g in groups]
    generations = generate_in_chunks(ctx, out, [g.key for g in groups], prompts, decoding, fingerprint=stamp)
    fluency = fluency_in_chunks(ctx, out, prompts, [g["gen_text"] for g in generations])
    items = [item for g in groups for item in g.items]
    per_item = [{**generation, "key": item.key} for g, generation in zip(groups, generations) for item in g.items]
    per_item_fluency = [f for g, f in zip(groups, fluency) for _ in g.items]
    verdicts = judge_in_chunks(ctx, out, [g["gen_text"] for g in per_item], [i.emotion for i in items])
    meta = record_meta(ctx, decoding, condition="baseline")
    records = [item_record(i, g, v, meta, f) for i, g, v, f in zip(items, per_item, verdicts, per_item_fluency)]
    tables = accuracy_tables(records)
    write_judged_outputs(out, records, tables, "Neutral baseline judged against each target: false-match rate")
    summary = {"stage": BASELINE_STAGE, "generations": len(groups), "judged": len(records),
               "false_match": tables["overall"], "false_match_fraction": overall_fraction(tables),
               "per_emotion": {e: c["accuracy"] for e, c in tables["per_emotion"].items()}}
    mark_finished(ctx.run, BASELINE_STAGE, stamp, summary)
    return summary


def best_scale(grid: Sequence[float], accuracy: Sequence[float | None], reference: float) -> float:
    """The scale with the highest accuracy; ties go to the one closest (in ratio) to `reference`."""
    values = np.asarray([np.nan if a is None else a for a in accuracy], float)
    if np.isnan(values).all():
        return reference
    tied = [s for s, a in zip(grid, values) if a == np.nanmax(values)]
    return min(tied, key=lambda s: (abs(np.log(s / reference)), s))


def run_scale_sweep(ctx: StageContext, scales: Sequence[float] = SCALE_GRID,
                    per_theme: int | None = None) -> dict[str, Any]:
    """Circuit modulation on the TRAIN split (or `per_theme` scenarios of each theme) at every base
    scale (anger keeps its official factor unless official scales are off); the best scale overall
    and per emotion is reported, never applied to the test split (D17)."""
    grid = [float(s) for s in scales]
    if not grid or min(grid) <= 0:
        raise InputError(f"modulation scales must be positive numbers, got {grid}")
    records = tuple(ctx.train) if per_theme is None else subsample(ctx.train, per_theme)
    stamp = {**_fingerprint(ctx, SWEEP_STAGE, records, emotion_scales(1.0, ctx.settings.official_scales)),
             "grid": grid}
    done = finished_summary(ctx.run, SWEEP_STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(SWEEP_STAGE)
    items = all_items(records)
    per_scale = {}
    for base in grid:
        lam = emotion_scales(base, ctx.settings.official_scales)
        _, tables = _modulated_generation(ctx, out, items, lam, {**stamp, "base_scale": base}, f"scale_{base:g}")
        per_scale[base] = tables
    curves = {"overall": [per_scale[s]["overall"]["accuracy"] for s in grid]}
    curves.update({e: [per_scale[s]["per_emotion"][e]["accuracy"] for s in grid] for e in EMOTIONS})
    best = {name: best_scale(grid, values, ctx.settings.modulation_scale) for name, values in curves.items()}
    write_json(out / "sweep.json", {"scales": grid, "split": "train", "items": len(items), "accuracy": curves,
                                    "best_scale": best, "tables": {f"{s:g}": t for s, t in per_scale.items()}})
    figures.scale_sweep(out / "scale_sweep.png", grid, curves, "Circuit modulation on the train split")
    summary = {"stage": SWEEP_STAGE, "split": "train", "items": len(items), "scales": grid, "best_scale": best,
               "accuracy": curves}
    mark_finished(ctx.run, SWEEP_STAGE, stamp, summary)
    return summary
