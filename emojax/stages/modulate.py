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
    modulate_sweep_train  optional, before modulate_test: the tuning protocol of `emojax.stages.tuning`
                          for lambda on the TRAIN split (never on the evaluation split, D17); the
                          chosen lambda (per emotion with --per_emotion_dose) is what modulate_test uses
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from emojax.circuit import Circuit
from emojax.data import EMOTIONS, Item, groups as all_groups, items as all_items
from emojax.evaluation.accuracy import accuracy_tables, overall_fraction
from emojax.method.hparams import modulation_scale
from emojax.method.prompts import neutral_messages
from emojax.model.config import ModelConfig
from emojax.model.interventions import Intervention
from emojax.runs import InputError, hash_path
from emojax.runs.stage_record import (digest, finished_summary, judge_identity, mark_finished, model_hash,
                                      records_digest)
from emojax.stages import tuning, upstream
from emojax.stages.context import StageContext
from emojax.stages.judged import (decoding_for, fluency_in_chunks, generate_in_chunks, item_record,
                                  judge_in_chunks, record_meta, run_judged_generation, write_judged_outputs)

STAGE = "modulate_test"
BASELINE_STAGE = "baseline_test"
SWEEP_STAGE = "modulate_sweep_train"


def emotion_scales(base: float | np.ndarray, official: bool) -> np.ndarray:
    """lambda_e [6]: `base` (one, or one per emotion), with the official anger factor 0.8 unless
    `official` is off (D11)."""
    bases = np.broadcast_to(np.asarray(base, np.float64), (len(EMOTIONS),))
    return np.asarray([modulation_scale(e, float(b), official) for e, b in zip(EMOTIONS, bases)], np.float32)


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
    """(u_attn, u_mlp) [6, L, D]: the branch-output additions the component edits amount to (§2.5).

    Refused for models with post-sublayer norms (Gemma 2/3): there a component edit changes the branch
    output inside a norm, which is no fixed residual vector (the edits themselves are exact)."""
    layers = params["layers"]
    if "attn_post_norm" in layers or "mlp_post_norm" in layers:
        raise ValueError("residual_vectors: this model normalises each branch output before the residual add "
                         "(post-sublayer norms), so component edits are not equivalent to fixed residual vectors; "
                         "apply them as head_add / neuron_add edits")
    w_o = np.asarray(layers["wo"], np.float32)          # [L, H*Dh, D]
    w_down = np.asarray(layers["w_down"], np.float32)   # [L, F, D]
    flat_heads = head_add.reshape(head_add.shape[0], head_add.shape[1], -1)
    return (np.einsum("elq,lqd->eld", flat_heads, w_o), np.einsum("elf,lfd->eld", neuron_add, w_down))


def row_intervention(neuron_add: np.ndarray, head_add: np.ndarray, emotion_rows: np.ndarray,
                     config: ModelConfig, resid_add_rms: np.ndarray | None = None) -> Intervention:
    """Per-row edits for rows of the given emotion indices: neurons on P_last, heads on P_all (D10);
    with `resid_add_rms` [L, B, 2, D], rms-scaled steering of the same rows on P_last too."""
    rows = np.asarray(emotion_rows, np.int32)
    iv = Intervention.identity(config, resid_where="none" if resid_add_rms is None else "from_last",
                               neuron_where="from_last", head_where="all").replace(
        neuron_add=np.moveaxis(neuron_add[rows], 0, 1), head_add=np.moveaxis(head_add[rows], 0, 1))
    return iv if resid_add_rms is None else iv.replace(resid_add_rms=resid_add_rms)


def stacked_edits(circuit_sets: Sequence[Mapping[str, Circuit]], scale_sets: Sequence[np.ndarray],
                  geometry: Mapping[str, np.ndarray], config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Edits of several (circuits, lambda_e) variants stacked emotion-fastest: [K*6, L, F] and
    [K*6, L, H, Dh]; variant k's emotion e is row k*6 + e."""
    edits = [component_edits(c, geometry["delta_mlp"], geometry["delta_attn"], s, config)
             for c, s in zip(circuit_sets, scale_sets)]
    return np.concatenate([n for n, _ in edits]), np.concatenate([h for _, h in edits])


def modulated_generation(ctx: StageContext, out: Path, items: Sequence[Item], edits: tuple[np.ndarray, np.ndarray],
                         variant: np.ndarray, stamp: Mapping[str, Any], job: str,
                         meta: Mapping[str, Any], steering: Callable[[np.ndarray], np.ndarray] | None = None
                         ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judged circuit-modulated replies: item i gets the edits of row variant[i] * 6 + its emotion
    of the stacked `edits` (see `stacked_edits`); `steering(item indices)`, when given, adds the
    rms-scaled steering `resid_add_rms` [L, B, 2, D] of those items."""
    neuron_add, head_add = edits
    rows = np.asarray(variant, np.int32) * len(EMOTIONS) + np.asarray([EMOTIONS.index(i.emotion) for i in items])
    decoding = decoding_for("circuit", ctx.preset.max_new_tokens, ctx.settings.harmonised, ctx.model.config)
    return run_judged_generation(
        ctx, out, items, [neutral_messages(i) for i in items], decoding, fingerprint=stamp,
        row_iv=lambda chunk: row_intervention(neuron_add, head_add, rows[chunk], ctx.config,
                                              None if steering is None else steering(chunk)),
        meta={"condition": "circuit", **meta}, job=job)


def circuit_members(circuits: Mapping[str, Circuit]) -> dict[str, list[Any]]:
    """{emotion: [neurons, heads]}: what a stamp digests of a set of circuits."""
    return {e: [c.neurons, c.heads] for e, c in circuits.items()}


def fingerprint(ctx: StageContext, stage: str, records: Sequence[Any], scales: np.ndarray | None,
                circuit_subdir: str | None = None) -> dict[str, Any]:
    condition = "baseline" if scales is None else "circuit"
    decoding = decoding_for(condition, ctx.preset.max_new_tokens, ctx.settings.harmonised, ctx.model.config)
    stamp = {"stage": stage, "dataset": records_digest(records), "model": model_hash(ctx),
             "decoding": decoding.to_json(), "judge": judge_identity(ctx.judge), "date": ctx.settings.date_string,
             "batch_size": ctx.preset.batch_size}
    if scales is not None:
        stamp["scales"] = scales.tolist()
        stamp["circuits"] = digest(circuit_members(upstream.circuits(ctx, circuit_subdir)))
        stamp["directions"] = hash_path(ctx.run.path / "directions" / "directions.npz")
    return stamp


def chosen_scales(ctx: StageContext, scale_sweep: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """(base lambda [6], lambda_e [6], source): the tuned base (after the tuning on train, run here if
    it has not run yet) or the --modulation_scale flag, with the anger factor unless it is off."""
    if not scale_sweep:
        base = tuning.chosen_doses(None, ctx.settings.modulation_scale, False)
        source = "flag --modulation_scale"
    else:
        sweep = run_scale_sweep(ctx)
        base = tuning.chosen_doses(sweep, ctx.settings.modulation_scale, ctx.settings.per_emotion_dose)
        source = f"tuned on the train split ({'per emotion' if ctx.settings.per_emotion_dose else 'one lambda'}): " \
                 f"{sweep['rule']}"
    return base, emotion_scales(base, ctx.settings.official_scales), source


def run(ctx: StageContext, scale_sweep: bool = False) -> dict[str, Any]:
    """Circuit modulation of every test item at the chosen lambda_e, judged; accuracy tables."""
    base, scales, source = chosen_scales(ctx, scale_sweep)
    stamp = fingerprint(ctx, STAGE, ctx.test, scales)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    items = all_items(ctx.test)
    edits = stacked_edits([upstream.circuits(ctx)], [scales], upstream.directions(ctx), ctx.config)
    records, tables = modulated_generation(ctx, out, items, edits, np.zeros(len(items)), stamp, "generate",
                                           {"scales": dict(zip(EMOTIONS, scales.tolist()))})
    write_judged_outputs(out, records, tables, "Circuit modulation accuracy (test split)")
    summary = {"stage": STAGE, "items": len(records), "scales": dict(zip(EMOTIONS, scales.tolist())),
               "lambda": tuning.dose_record(base, ctx.settings.per_emotion_dose and scale_sweep),
               "lambda_source": source,
               "accuracy": tables["overall"], "accuracy_fraction": overall_fraction(tables),
               "per_emotion": {e: c["accuracy"] for e, c in tables["per_emotion"].items()}}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary


def run_baseline(ctx: StageContext) -> dict[str, Any]:
    """One unmodified generation per test group, judged against each of the six emotions."""
    stamp = fingerprint(ctx, BASELINE_STAGE, ctx.test, None)
    done = finished_summary(ctx.run, BASELINE_STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(BASELINE_STAGE)
    groups = all_groups(ctx.test)
    decoding = decoding_for("baseline", ctx.preset.max_new_tokens, ctx.settings.harmonised, ctx.model.config)
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


def run_scale_sweep(ctx: StageContext) -> dict[str, Any]:
    """The tuning protocol for the base lambda on the preset's train groups (reference:
    --modulation_scale; anger keeps its official factor unless official scales are off)."""
    chosen = tuning.spread_groups(ctx.train, ctx.preset.tune_groups)
    records = tuple(dict.fromkeys(g.record for g in chosen))
    stamp = {**fingerprint(ctx, SWEEP_STAGE, records, emotion_scales(1.0, ctx.settings.official_scales)),
             "groups": [g.key for g in chosen]}
    circuits, geometry = upstream.circuits(ctx), upstream.directions(ctx)

    def generate(directory: Path, items: Sequence[Item], dose_index: np.ndarray, doses: Sequence[float],
                 job: str) -> list[dict[str, Any]]:
        scale_sets = [emotion_scales(d, ctx.settings.official_scales) for d in doses]
        edits = stacked_edits([circuits] * len(doses), scale_sets, geometry, ctx.config)
        return modulated_generation(ctx, directory, items, edits, dose_index, {**stamp, "scales": list(doses)}, job,
                                    {"official_scales": ctx.settings.official_scales})[0]

    method = tuning.Method(SWEEP_STAGE, "circuit", "lambda", tuning.round_dose(ctx.settings.modulation_scale), generate)
    return tuning.run_tuning(ctx, method, stamp, tuning.rule_for(ctx.preset), chosen)
