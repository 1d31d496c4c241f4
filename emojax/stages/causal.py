"""§14.2 exhaustive causal neuron and head scans, §14.4 attribution patching, and how well three rankings
of the components agree.

On a per-emotion subset of the captured emotion prompts (`preset.causal_prompts` each, evenly spaced;
the stage is skipped when that is 0), with the read-out <h_final[t*], v_ref,e>:
- causal neuron scan: a_{l,j}[t*] <- 0 for one neuron at a time, every neuron of the scanned layers
  (default: all), as one-token suffix passes (T6);
- causal head scan: z_{l,h}[t] <- 0 at every real position for one head at a time (the S4b edit),
  recomputed from layer l;
- attribution patching: the first-order estimate of both, every neuron and head, from one forward and
  one backward pass per prompt;
- analytic scores of the same prompts: neuron contributions c = a * beta (S4a) and the closed-form
  same-layer head importance (S4b).

All scores are oriented so that larger means "pushes towards the emotion": analytic c and s - s';
causal -(s_ablated - s); gradient -(estimated change). Each is averaged over an emotion's prompts, then
compared within each layer: Spearman correlation and the overlap of the top-k sets (k = 16 neurons,
2 heads) for the pairs analytic-causal, analytic-gradient and causal-gradient.

Outputs in `<run>/causal/`:
    causal_scores.npz   neuron_{analytic,causal,gradient} [6, L, F], head_{analytic,causal,gradient}
                        [6, L, H] (prompt means; causal NaN outside the scanned layers), prompts [6],
                        layers [scanned]
    agreement.csv       emotion, kind, layer, pair, spearman, top_k, overlap
    agreement.json      means over emotions and layers per (kind, pair), and per emotion
    agreement_by_layer.png, causal_vs_analytic.png
    the resumable per-prompt-chunk job
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

from emojax.data import EMOTIONS  # noqa: E402
from emojax.evaluation.geometry_plots import COLOURS  # noqa: E402
from emojax.method import prompts  # noqa: E402
from emojax.model.config import ModelConfig  # noqa: E402
from emojax.runs import ChunkedJob, InputError, hash_path, write_csv, write_json, write_npz  # noqa: E402
from emojax.runs.stage_record import digest, finished_summary, mark_finished, model_hash  # noqa: E402
from emojax.scan import (attribution_scores, capture_prefix, causal_head_scan, causal_neuron_scan,  # noqa: E402
                         head_ablation_same_layer, neuron_contributions)
from emojax.stages import components, upstream, validation  # noqa: E402
from emojax.stages.context import StageContext  # noqa: E402

STAGE = "causal"
METHODS = ("analytic", "causal", "gradient")
PAIRS = (("analytic", "causal"), ("analytic", "gradient"), ("causal", "gradient"))
TOP_K = {"neuron": 16, "head": 2}
CHUNK_PROMPTS = 4
AGREEMENT_COLUMNS = ("emotion", "kind", "layer", "pair", "spearman", "top_k", "overlap")


def prompt_scores(params: dict[str, Any], tokens: np.ndarray, mask: np.ndarray, emotion: np.ndarray,
                  geometry: dict[str, np.ndarray], layers: Sequence[int], config: ModelConfig,
                  mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """Every score of every component for each prompt (rows first): neuron_* [B, L, F], head_* [B, L, H],
    oriented towards the emotion; causal scores are NaN outside `layers`. `mesh` splits the rows."""
    readout = geometry["v_ref"][emotion]
    prefix = capture_prefix(params, tokens, mask, config=config, keep_sequence=True, mesh=mesh)
    b, L = len(emotion), config.n_layers
    out = {"neuron_causal": np.full((b, L, config.d_ff), np.nan, np.float32),
           "head_causal": np.full((b, L, config.n_heads), np.nan, np.float32)}
    if layers:
        neurons = causal_neuron_scan(params, prefix, readout, config=config, layers=layers)
        heads = causal_head_scan(params, prefix, readout, config=config, positions="all", layers=layers)
        out["neuron_causal"][:, list(layers)] = -np.moveaxis(neurons.effect, -1, 0)
        out["head_causal"][:, list(layers)] = -np.moveaxis(heads.effect, -1, 0)
    gradient = attribution_scores(params, tokens, mask, readout, config=config, head_positions="all")
    out["neuron_gradient"] = -np.moveaxis(gradient.neurons, -1, 0)
    out["head_gradient"] = -np.moveaxis(gradient.heads, -1, 0)
    out["neuron_analytic"] = neuron_contributions(params, prefix.g, geometry["dirs_mlp"][emotion], config=config)
    out["head_analytic"] = head_ablation_same_layer(params, prefix.z, prefix.resid_mid, geometry["dirs_attn"][emotion],
                                                    config=config)[0]
    return {name: np.asarray(value, np.float32) for name, value in out.items()}


def emotion_means(scores: dict[str, np.ndarray], emotion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-emotion means over prompts: [6, L, W] per score (NaN for an emotion without prompts)."""
    means = {}
    for name, values in scores.items():
        stacked = np.full((len(EMOTIONS),) + values.shape[1:], np.nan, np.float32)
        for e in range(len(EMOTIONS)):
            if (emotion == e).any():
                stacked[e] = values[emotion == e].mean(axis=0)
        means[name] = stacked
    return means


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(a) & top-k(b)| / k, top-k by descending score."""
    k = min(k, len(a))
    return len(set(components.ranking(a)[:k].tolist()) & set(components.ranking(b)[:k].tolist())) / k


def agreement_rows(means: dict[str, np.ndarray], layers: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for e, emotion in enumerate(EMOTIONS):
        for kind in ("neuron", "head"):
            for layer in layers:
                for first, second in PAIRS:
                    a, b = means[f"{kind}_{first}"][e, layer], means[f"{kind}_{second}"][e, layer]
                    if np.isnan(a).any() or np.isnan(b).any():
                        continue
                    rows.append({"emotion": emotion, "kind": kind, "layer": int(layer), "pair": f"{first}-{second}",
                                 "spearman": spearman(a, b), "top_k": TOP_K[kind],
                                 "overlap": top_k_overlap(a, b, TOP_K[kind])})
    return rows


def agreement_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float]) -> float | None:
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else None

    summary: dict[str, Any] = {"top_k": TOP_K, "overall": {}, "per_emotion": {}}
    for kind in ("neuron", "head"):
        for first, second in PAIRS:
            pair = f"{first}-{second}"
            mine = [r for r in rows if r["kind"] == kind and r["pair"] == pair]
            summary["overall"][f"{kind}:{pair}"] = {"spearman": mean([r["spearman"] for r in mine]),
                                                    "overlap": mean([r["overlap"] for r in mine])}
            for emotion in EMOTIONS:
                theirs = [r for r in mine if r["emotion"] == emotion]
                summary["per_emotion"].setdefault(emotion, {})[f"{kind}:{pair}"] = {
                    "spearman": mean([r["spearman"] for r in theirs]), "overlap": mean([r["overlap"] for r in theirs])}
    return summary


# ---------------------------------------------------------------------------------------------
# Figures


def plot_agreement(path: Path, rows: list[dict[str, Any]], model: str) -> None:
    """Within-layer Spearman correlation (mean over emotions) per pair of rankings, by layer."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, kind in zip(axes, ("neuron", "head")):
        for (first, second), style in zip(PAIRS, ("o-", "s--", "^:")):
            pair = f"{first}-{second}"
            layers = sorted({r["layer"] for r in rows if r["kind"] == kind and r["pair"] == pair})
            values = [np.nanmean([r["spearman"] for r in rows if r["kind"] == kind and r["pair"] == pair
                                  and r["layer"] == layer]) for layer in layers]
            ax.plot(layers, values, style, ms=3, label=pair)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_xlabel("layer")
        ax.set_title(f"{kind}s")
    axes[0].set_ylabel("Spearman (within layer, mean over emotions)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Agreement of analytic, causal and gradient rankings ({model})")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.86, wspace=0.08)
    components.save_png(fig, path)


def plot_causal_vs_analytic(path: Path, means: dict[str, np.ndarray], layer: int, model: str) -> None:
    """Causal vs analytic score: the neurons of one scanned layer, and the heads of every scanned layer."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, select in ((axes[0], "neuron", lambda a: a[:, layer]), (axes[1], "head", lambda a: a)):
        for e, emotion in enumerate(EMOTIONS):
            x, y = select(means[f"{kind}_analytic"][e]).ravel(), select(means[f"{kind}_causal"][e]).ravel()
            keep = ~np.isnan(y)
            ax.scatter(x[keep], y[keep], s=4, alpha=0.5, color=COLOURS[emotion], label=emotion)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.axvline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("analytic (S4a contribution / S4b same-layer importance)")
        ax.set_ylabel("causal: drop of <h_final, v_ref> when ablated")
        ax.set_title(f"neurons, layer {layer}" if kind == "neuron" else "heads, scanned layers")
    axes[1].legend(fontsize=7, markerscale=3)
    fig.suptitle(f"Analytic vs causal component scores, emotion means ({model})")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.87, wspace=0.28)
    components.save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# Stage


def fingerprint(ctx: StageContext, per_emotion: int, layers: Sequence[int]) -> dict[str, Any]:
    run = ctx.run.path
    return {"stage": STAGE, "model": model_hash(ctx), "items": hash_path(run / "capture" / "items.json"),
            "directions": hash_path(run / "directions" / "directions.npz"), "prompts_per_emotion": per_emotion,
            "layers": list(layers), "date": ctx.settings.date_string, "chunk": CHUNK_PROMPTS}


def scan_means(ctx: StageContext, per_emotion: int, layers: Sequence[int], directory: Path, stamp: Any
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(per-emotion means of every score [6, L, W], prompts per emotion [6]) of `per_emotion` evenly
    spaced captured prompts per emotion, scanned as a resumable job in `directory` keyed by `stamp`."""
    cfg = ctx.config
    geometry = upstream.directions(ctx)
    captured = upstream.captured_items(ctx)
    chosen = validation.select_rows(captured.emotion, per_emotion)
    rows = np.concatenate([chosen[e] for e in range(len(EMOTIONS))])
    emotion = captured.emotion[rows]
    pairs = validation.prompt_pairs([captured.keys[i] for i in rows], ctx.train)
    batch = prompts.tokenize_prompts(ctx.model.tokenizer, [p[0] for p in pairs], date_string=ctx.settings.date_string)
    size = min(CHUNK_PROMPTS, len(rows))

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        idx = np.minimum(np.arange(start, start + size), stop - 1)  # fixed chunk shape: one compilation
        scores = prompt_scores(ctx.model.params, batch.tokens[idx], batch.mask[idx], emotion[idx], geometry, layers,
                               cfg, mesh=ctx.mesh)
        return {name: value[: stop - start] for name, value in scores.items()}

    job = ChunkedJob(directory, f"scan-{digest(stamp)}", len(rows), size, stamp)
    means = emotion_means(job.run(compute, desc="causal scan prompts"), emotion)
    return means, np.bincount(emotion, minlength=len(EMOTIONS))


def run(ctx: StageContext, prompts_per_emotion: int | None = None,
        layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Causal scans, attribution and the agreement table (skipped when there are no prompts to scan)."""
    cfg = ctx.config
    per_emotion = ctx.preset.causal_prompts if prompts_per_emotion is None else int(prompts_per_emotion)
    if per_emotion <= 0:
        logging.warning("%s: no prompts to scan (preset %s has causal_prompts=0); skipped", STAGE, ctx.preset.name)
        return {"stage": STAGE, "skipped": f"preset {ctx.preset.name} scans 0 prompts per emotion"}
    layers = tuple(range(cfg.n_layers)) if layers is None else tuple(sorted({int(l) for l in layers}))
    if not layers or any(not 0 <= l < cfg.n_layers for l in layers):
        raise InputError(f"{STAGE}: layers {list(layers)} must be in 0..{cfg.n_layers - 1}")
    stamp = fingerprint(ctx, per_emotion, layers)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)

    means, counts = scan_means(ctx, per_emotion, layers, out, stamp)
    table = agreement_rows(means, layers)
    summary_table = agreement_summary(table)
    write_npz(out / "causal_scores.npz", {**means, "prompts": counts, "layers": np.asarray(layers, np.int32)},
              meta={"model_hash": model_hash(ctx), "model_name": ctx.model.name, "emotions": list(EMOTIONS),
                    "orientation": "larger = pushes towards the emotion", "readout": "<h_final[t*], v_ref>",
                    "ablation": "zero; neurons at t*, heads at every position"})
    write_csv(out / "agreement.csv", table, header=AGREEMENT_COLUMNS)
    write_json(out / "agreement.json", summary_table)
    plot_agreement(out / "agreement_by_layer.png", table, ctx.model.name)
    plot_causal_vs_analytic(out / "causal_vs_analytic.png", means, layers[len(layers) // 2], ctx.model.name)
    summary = {"stage": STAGE, "prompts": dict(zip(EMOTIONS, counts.tolist())), "layers": list(layers),
               "agreement": summary_table["overall"]}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary
