"""S3: direction steering, the steering baseline (method.md S3, §6, §8), with alpha tuned on TRAIN.

Each evaluation item gets the neutral prompt (no emotion instruction) and a greedy reply with the
"steering" settings of §6, while at every transferred steering layer l the layer output is edited at
every position of P_last (t* and every generated token):

    x_{l+1}[t] <- h + alpha * rms(h) * v^{mlp,l}_e,    h = x_{l+1}[t]

(`Intervention.resid_add_rms` at site 1 with resid_where="from_last"). The intervention is per row,
so the six emotions of a group, which share one prompt, run in one batch, and so do the doses of one
tuning step. Replies are judged against the target emotion.

Alpha: the flag value if given, else the alpha the tuning protocol of `emojax.stages.tuning` chose on
the TRAIN split (never on the evaluation split, D17/D19; per emotion with --per_emotion_dose), else
the transfer rule of §8 (8 sqrt(d/3072), or literal 8). Outputs: `steer_test/` (records, accuracy,
alpha.json) and, with the tuning, `steer_sweep_train/` (per-alpha records and accuracy, sweep.json,
sweep.csv, tuning.png).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from emojax.data import EMOTIONS, Item, SevRecord, items as all_items
from emojax.evaluation.accuracy import overall_fraction
from emojax.method.prompts import neutral_messages
from emojax.model.interventions import Intervention
from emojax.runs import InputError, write_json
from emojax.runs.manifest import hash_file
from emojax.runs.stage_record import judge_identity, finished_summary, mark_finished, model_hash, records_digest
from emojax.stages import directions_stage, tuning
from emojax.stages.context import StageContext
from emojax.stages.judged import decoding_for, run_judged_generation, write_judged_outputs

STAGE = "steer_test"
SWEEP_STAGE = "steer_sweep_train"


def steering_intervention(config: Any, dirs_mlp: np.ndarray, emotion: np.ndarray, layers: Sequence[int],
                          alpha: float | np.ndarray) -> Intervention:
    """Per-row rms-scaled steering: row b adds alpha[b] * rms(h) * dirs_mlp[emotion[b], l] after the MLP
    of every layer in `layers`, on P_last (`alpha`: one number or one per row). resid_add_rms is
    [L, B, 2, D]."""
    emotion = np.asarray(emotion)
    alpha = np.broadcast_to(np.asarray(alpha, np.float32), emotion.shape)[:, None]
    add = np.zeros((config.n_layers, len(emotion), 2, config.d_model), np.float32)
    for layer in layers:
        add[layer, :, 1] = alpha * dirs_mlp[emotion, layer]
    return Intervention.identity(config, resid_where="from_last", neuron_where="none", head_where="none").replace(
        resid_add_rms=jnp.asarray(add))


def steer_items(ctx: StageContext, directory: Path, items: Sequence[Item], dirs_mlp: np.ndarray,
                alpha: float | np.ndarray, *, fingerprint: Any, job: str = "generate",
                meta: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Steered, judged replies to the neutral prompts of `items` (alpha: one, or one per item):
    (records, accuracy tables)."""
    layers = list(ctx.hparams.steer_layers)
    emotion = np.array([EMOTIONS.index(i.emotion) for i in items])
    per_row = np.broadcast_to(np.asarray(alpha, np.float32), emotion.shape)
    decoding = decoding_for("steering", ctx.preset.max_new_tokens, ctx.settings.harmonised, ctx.model.config)
    return run_judged_generation(
        ctx, directory, items, [neutral_messages(i) for i in items], decoding, fingerprint=fingerprint,
        row_iv=lambda rows: steering_intervention(ctx.config, dirs_mlp, emotion[rows], layers, per_row[rows]),
        meta={"condition": "steering", "steer_layers": [layers[0], layers[-1]], "scaling": "rms",
              "positions": "P_last", **(meta or {})}, job=job)


def _base_stamp(ctx: StageContext, records: Sequence[SevRecord], split: str) -> dict[str, Any]:
    decoding = decoding_for("steering", ctx.preset.max_new_tokens, ctx.settings.harmonised, ctx.model.config)
    layers = ctx.hparams.steer_layers
    return {"split": split, "dataset": records_digest(records), "model": model_hash(ctx),
            "directions": hash_file(ctx.run.path / directions_stage.STAGE / "directions.npz"),
            "steer_layers": [layers.start, layers.stop - 1], "decoding": decoding.to_json(),
            "judge": judge_identity(ctx.judge), "date": ctx.settings.date_string,
            "batch_size": ctx.preset.batch_size}


def run_sweep(ctx: StageContext, dirs_mlp: np.ndarray) -> dict[str, Any]:
    """The tuning protocol for alpha on the preset's train groups (reference: the transferred alpha)."""
    chosen = tuning.spread_groups(ctx.train, ctx.preset.tune_groups)
    records = tuple(dict.fromkeys(g.record for g in chosen))
    stamp = {"stage": SWEEP_STAGE, "groups": [g.key for g in chosen], **_base_stamp(ctx, records, "train")}

    def generate(directory: Path, items: Sequence[Item], dose_index: np.ndarray, doses: Sequence[float],
                 job: str) -> list[dict[str, Any]]:
        alphas = np.asarray(doses, np.float32)[dose_index]
        return steer_items(ctx, directory, items, dirs_mlp, alphas, fingerprint={**stamp, "alphas": list(doses)},
                           job=job)[0]

    method = tuning.Method(SWEEP_STAGE, "steering", "alpha", tuning.round_dose(ctx.hparams.steer_alpha), generate)
    return tuning.run_tuning(ctx, method, stamp, tuning.rule_for(ctx.preset), chosen)


def run(ctx: StageContext, alpha_sweep: bool = False) -> dict[str, Any]:
    """Steer every item of the test split (after the optional tuning on train); returns the summary."""
    vectors, directions_meta = directions_stage.load(ctx)
    dirs_mlp = vectors["dirs_mlp"]
    sweep = run_sweep(ctx, dirs_mlp) if alpha_sweep else None
    if not ctx.test:
        raise InputError("the test split is empty: nothing to steer")
    per_emotion = ctx.settings.per_emotion_dose and sweep is not None and ctx.settings.steer_alpha is None
    if ctx.settings.steer_alpha is not None:
        alphas, source = tuning.chosen_doses(None, ctx.settings.steer_alpha, False), "flag --steer_alpha"
    elif sweep is not None:
        alphas = tuning.chosen_doses(sweep, ctx.hparams.steer_alpha, per_emotion)
        source = f"tuned on the train split ({'per emotion' if per_emotion else 'one alpha'}): {sweep['rule']}"
    else:
        alphas = tuning.chosen_doses(None, ctx.hparams.steer_alpha, False)
        source = "literal 8" if ctx.settings.literal_alpha else "transferred 8*sqrt(d/3072) (method.md §8)"
    alpha = tuning.dose_record(alphas, per_emotion)
    stamp = {"stage": STAGE, "alpha": alpha, **_base_stamp(ctx, ctx.test, "test")}
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    items = all_items(ctx.test)
    emotion = np.array([EMOTIONS.index(i.emotion) for i in items])
    records, tables = steer_items(ctx, out, items, dirs_mlp, alphas[emotion], fingerprint=stamp,
                                  meta={"alpha": alpha})
    write_judged_outputs(out, records, tables, f"Steering accuracy (test split, alpha {_dose_text(alpha)})")
    layers = ctx.hparams.steer_layers
    choice = {"alpha": alpha, "source": source, "transferred_alpha": ctx.hparams.steer_alpha,
              "steer_layers": [layers.start, layers.stop - 1], "directions_rule": directions_meta.get("rule"),
              "sweep": sweep}
    write_json(out / "alpha.json", choice)
    summary = {"stage": STAGE, "items": len(records), "alpha": alpha, "alpha_source": source,
               "directions_rule": directions_meta.get("rule"), "accuracy": tables["overall"],
               "accuracy_fraction": overall_fraction(tables),
               "per_emotion": {e: c["accuracy"] for e, c in tables["per_emotion"].items()}}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary


def _dose_text(dose: float | dict[str, float]) -> str:
    return ", ".join(f"{e} {d:g}" for e, d in dose.items()) if isinstance(dose, dict) else f"{dose:g}"
