"""S3: direction steering, the steering baseline (method.md S3, §6, §8), with an alpha sweep on TRAIN.

Each evaluation item gets the neutral prompt (no emotion instruction) and a greedy reply with the
"steering" settings of §6, while at every transferred steering layer l the layer output is edited at
every position of P_last (t* and every generated token):

    x_{l+1}[t] <- h + alpha * rms(h) * v^{mlp,l}_e,    h = x_{l+1}[t]

(`Intervention.resid_add_rms` at site 1 with resid_where="from_last"). The intervention is per row,
so the six emotions of a group, which share one prompt, run in one batch. Replies are judged against
the target emotion.

Alpha: the flag value if given, else the best alpha of the optional sweep on the TRAIN split (never
tuned on the evaluation split, D17/D19), else the transfer rule of §8 (8 sqrt(d/3072), or literal 8).
Outputs: `steer_test/` (records, accuracy, alpha.json) and, with the sweep, `steer_sweep_train/`
(per-alpha records and accuracy, sweep.json, sweep.csv, sweep.png).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from emojax.data import EMOTIONS, Item, SevRecord, items as all_items, subsample  # noqa: E402
from emojax.interventions import Intervention  # noqa: E402
from emojax.prompts import neutral_messages  # noqa: E402
from emojax.runs import InputError, write_bytes, write_csv, write_json  # noqa: E402
from emojax.runs.manifest import hash_file  # noqa: E402
from emojax.stages import directions_stage  # noqa: E402
from emojax.stages.accuracy import overall_fraction  # noqa: E402
from emojax.stages.context import StageContext  # noqa: E402
from emojax.stages.judged import (decoding_for, finished_summary, judge_identity, mark_finished,  # noqa: E402
                                  model_hash, records_digest, run_judged_generation, write_judged_outputs)

STAGE = "steer_test"
SWEEP_STAGE = "steer_sweep_train"
SWEEP_MULTIPLIERS = (0.5, 1.0, 2.0, 3.0)   # default grid, in units of the transferred alpha


def steering_intervention(config: Any, dirs_mlp: np.ndarray, emotion: np.ndarray, layers: Sequence[int],
                          alpha: float) -> Intervention:
    """Per-row rms-scaled steering: row b adds alpha * rms(h) * dirs_mlp[emotion[b], l] after the MLP of
    every layer in `layers`, on P_last. resid_add_rms is [L, B, 2, D]."""
    emotion = np.asarray(emotion)
    add = np.zeros((config.n_layers, len(emotion), 2, config.d_model), np.float32)
    for layer in layers:
        add[layer, :, 1] = alpha * dirs_mlp[emotion, layer]
    return Intervention.identity(config, resid_where="from_last", neuron_where="none", head_where="none").replace(
        resid_add_rms=jnp.asarray(add))


def steer_items(ctx: StageContext, directory: Path, items: Sequence[Item], dirs_mlp: np.ndarray, alpha: float,
                *, fingerprint: Any, job: str = "generate") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Steered, judged replies to the neutral prompts of `items`: (records, accuracy tables)."""
    layers = list(ctx.hparams.steer_layers)
    emotion = np.array([EMOTIONS.index(i.emotion) for i in items])
    decoding = decoding_for("steering", ctx.preset.max_new_tokens, ctx.settings.harmonised)
    return run_judged_generation(
        ctx, directory, items, [neutral_messages(i) for i in items], decoding, fingerprint=fingerprint,
        row_iv=lambda rows: steering_intervention(ctx.config, dirs_mlp, emotion[rows], layers, alpha),
        meta={"condition": "steering", "alpha": alpha, "steer_layers": [layers[0], layers[-1]],
              "scaling": "rms", "positions": "P_last"}, job=job)


def sweep_grid(ctx: StageContext, alphas: Sequence[float] | None) -> list[float]:
    """The alphas to try: given ones, else SWEEP_MULTIPLIERS times the transferred alpha."""
    grid = list(alphas) if alphas else [m * ctx.hparams.steer_alpha for m in SWEEP_MULTIPLIERS]
    if not grid or any(not math.isfinite(a) or a <= 0 for a in grid):
        raise InputError(f"--alphas must be positive numbers, got {grid}")
    return sorted({round(float(a), 4) for a in grid})


def best_alpha(results: dict[float, float], reference: float) -> float:
    """Highest train accuracy; ties go to the alpha closest (in ratio) to the transferred one."""
    top = max(results.values())
    tied = [a for a, acc in results.items() if acc == top]
    return min(tied, key=lambda a: (abs(math.log(a / reference)), a))


def _base_stamp(ctx: StageContext, records: Sequence[SevRecord], split: str) -> dict[str, Any]:
    decoding = decoding_for("steering", ctx.preset.max_new_tokens, ctx.settings.harmonised)
    layers = ctx.hparams.steer_layers
    return {"split": split, "dataset": records_digest(records), "model": model_hash(ctx),
            "directions": hash_file(ctx.run.path / directions_stage.STAGE / "directions.npz"),
            "steer_layers": [layers.start, layers.stop - 1], "decoding": decoding.to_json(),
            "judge": judge_identity(ctx.judge), "date": ctx.settings.date_string,
            "batch_size": ctx.preset.batch_size}


def run_sweep(ctx: StageContext, dirs_mlp: np.ndarray, alphas: Sequence[float] | None = None,
              per_theme: int | None = None) -> dict[str, Any]:
    """Steering accuracy on the TRAIN split for every alpha of the grid; picks the best alpha."""
    records = tuple(ctx.train) if per_theme is None else subsample(ctx.train, per_theme)
    grid = sweep_grid(ctx, alphas)
    stamp = {"stage": SWEEP_STAGE, "alphas": grid, **_base_stamp(ctx, records, "train")}
    done = finished_summary(ctx.run, SWEEP_STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(SWEEP_STAGE)
    items = all_items(records)
    rows, overall = [], {}
    for alpha in grid:
        logging.info("steering sweep on train: alpha %g (%d items)", alpha, len(items))
        sub = out / f"alpha_{alpha:g}"
        sub.mkdir(exist_ok=True)
        judged, tables = steer_items(ctx, sub, items, dirs_mlp, alpha, fingerprint={**stamp, "alpha": alpha})
        write_judged_outputs(sub, judged, tables, f"Steering accuracy, train split, alpha {alpha:g}")
        overall[alpha] = overall_fraction(tables)
        rows.append({"alpha": alpha, "overall": tables["overall"]["accuracy"],
                     **{e: tables["per_emotion"][e]["accuracy"] for e in EMOTIONS},
                     "matched": tables["overall"]["matched"], "total": tables["overall"]["total"]})
    best = best_alpha(overall, ctx.hparams.steer_alpha)
    write_csv(out / "sweep.csv", rows)
    summary = {"stage": SWEEP_STAGE, "split": "train", "items": len(items), "alphas": grid,
               "accuracy": {f"{a:g}": overall[a] for a in grid}, "best_alpha": best,
               "transferred_alpha": ctx.hparams.steer_alpha}
    write_json(out / "sweep.json", {**summary, "rows": rows})
    plot_sweep(rows, best, out / "sweep.png", ctx.model.name)
    mark_finished(ctx.run, SWEEP_STAGE, stamp, summary)
    return summary


def plot_sweep(rows: Sequence[dict[str, Any]], best: float, path: Path, model_name: str) -> None:
    alphas = [r["alpha"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(alphas, [r["overall"] for r in rows], color="black", linewidth=2.2, marker="o", label="overall")
    for e in EMOTIONS:
        ax.plot(alphas, [r[e] for r in rows], marker=".", linewidth=1, label=e)
    ax.axvline(best, color="grey", linestyle="--", label=f"best alpha {best:g}")
    ax.set_xlabel("alpha (rms-scaled)")
    ax.set_ylabel("judged accuracy on train (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"Steering alpha sweep, train split ({model_name})")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def run(ctx: StageContext, alpha_sweep: bool = False, alphas: Sequence[float] | None = None,
        sweep_per_theme: int | None = None) -> dict[str, Any]:
    """Steer every item of the test split (after the optional train sweep); returns the summary."""
    if not ctx.test:
        raise InputError("the test split is empty: nothing to steer")
    vectors, directions_meta = directions_stage.load(ctx)
    dirs_mlp = vectors["dirs_mlp"]
    sweep = run_sweep(ctx, dirs_mlp, alphas, sweep_per_theme) if alpha_sweep else None
    if ctx.settings.steer_alpha is not None:
        alpha, source = ctx.settings.steer_alpha, "flag --steer_alpha"
    elif sweep is not None:
        alpha, source = sweep["best_alpha"], "best train-split accuracy of the alpha sweep"
    else:
        alpha = ctx.hparams.steer_alpha
        source = "literal 8" if ctx.settings.literal_alpha else "transferred 8*sqrt(d/3072) (method.md §8)"
    stamp = {"stage": STAGE, "alpha": alpha, **_base_stamp(ctx, ctx.test, "test")}
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    items = all_items(ctx.test)
    records, tables = steer_items(ctx, out, items, dirs_mlp, alpha, fingerprint=stamp)
    write_judged_outputs(out, records, tables, f"Steering accuracy (test split, alpha {alpha:g})")
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
