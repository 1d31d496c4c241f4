"""Stage S4a-S4b: emotion neurons and attention heads, from the fused capture with no extra forward pass.

S4a, neurons (analytic). With beta^l_e = W_down^(l)^T v^{mlp,l}_e, neuron j of layer l contributes
c = a_{l,j}[t*] * beta^l_{e,j} to <o^mlp_l[t*], v^{mlp,l}_e>, and the contributions of a layer sum to
exactly that projection. Per (e, l, j), over the samples I_e: C_mean, C_pos, C_neg, beta, H_mean.
With post-sublayer norms (Gemma 2/3) o^mlp = N_post(a W_down), and c is the exact drop of the
projection when the neuron alone is zeroed, through that norm (emojax.scan.neurons); the head closed
form likewise removes the head inside the attention's post norm.
Ranking: signed C_mean, descending, within each layer (D6).

S4b, heads (closed form, method.md T5). s_l = <N^post_l(m_l[t*]), v^{attn,l}_e> and s'_{l,h} the same
with head h zeroed at every position, which at layer l's own t* is m' = m - W_O[:, h] z_{l,h}; the
importance is s_l - s'_{l,h}. Per (e, l, h): mean, population std, count, baseline mean of s_l.
Ranking: mean importance, descending, within each layer.

Samples I_e: every captured item of emotion e. Under the paper's rule the capture holds all accepted
items, incomplete groups included (D2); under the "all" rule (asked for, or the capture's fallback),
every prompted item. The rule is recorded in the outputs.

Outputs in `<run>/components/`:
    neuron_stats.npz   C_mean, C_pos, C_neg, beta, H_mean [6, L, F]; count [6];
                       order [6, L, F] (neuron ids by C_mean, descending, per layer)
    head_stats.npz     mean, std, count, baseline_mean [6, L, H]; order [6, L, H]
    head_importance_{emotion}.csv   the official layout: layer, head, mean_importance, std_importance,
                                    samples, baseline_mean (layer-major)
    long_tail.json     how few components carry most of the positive effect (`long_tail`)
    long_tail.png, head_importance.png
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from emojax.data import EMOTIONS  # noqa: E402
from emojax.evaluation.geometry_plots import COLOURS  # noqa: E402
from emojax.model.config import ModelConfig  # noqa: E402
from emojax.runs import InputError, hash_path, write_bytes, write_csv, write_json, write_npz  # noqa: E402
from emojax.runs.stage_record import finished_summary, mark_finished, model_hash  # noqa: E402
from emojax.scan import head_ablation_same_layer, neuron_stats  # noqa: E402
from emojax.stages import capture, upstream  # noqa: E402
from emojax.stages.context import StageContext  # noqa: E402

STAGE = "components"
HEAD_CSV_COLUMNS = ("layer", "head", "mean_importance", "std_importance", "samples", "baseline_mean")
SHARE_LEVELS = (0.5, 0.8, 0.9)
NEURON_SHARE_KS = (1, 2, 4, 8, 16, 32, 64)


# ---------------------------------------------------------------------------------------------
# S4a and S4b statistics


def ranking(scores: np.ndarray) -> np.ndarray:
    """Component ids by score, descending, along the last axis (ties keep the lower id first)."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable").astype(np.int32)


def neuron_statistics(params: dict[str, Any], g: np.ndarray, emotion: np.ndarray,
                      dirs_mlp: np.ndarray, config: ModelConfig | None = None) -> dict[str, np.ndarray]:
    """S4a aggregates [6, L, F] (and count [6]) from activations g [N, L, F] at t* (`config` is needed
    for models with post-sublayer norms, whose contributions pass through the MLP's post norm)."""
    stats = neuron_stats(params, g, emotion, dirs_mlp, config=config)
    return {**stats, "order": ranking(stats["C_mean"])}


def head_statistics(params: dict[str, Any], z: np.ndarray, resid_mid: np.ndarray, emotion: np.ndarray,
                    dirs_attn: np.ndarray, config: ModelConfig) -> dict[str, np.ndarray]:
    """S4b aggregates [6, L, H] from z [N, L, H*Dh] and resid_mid [N, L, D] at t*.

    Each emotion's items are scored against its own directions; emotions run one after another
    (six closed-form calls, every head and layer at once inside each)."""
    shape = (len(EMOTIONS), config.n_layers, config.n_heads)
    out = {name: np.zeros(shape, np.float64) for name in ("mean", "std", "count", "baseline_mean")}
    for e in range(len(EMOTIONS)):
        rows = np.flatnonzero(emotion == e)
        importance, base = head_ablation_same_layer(params, z[rows], resid_mid[rows], dirs_attn[e], config=config)
        importance, base = importance.astype(np.float64), base.astype(np.float64)
        out["mean"][e] = importance.mean(axis=0)
        out["std"][e] = importance.std(axis=0)  # population std, as the official table
        out["count"][e] = len(rows)
        out["baseline_mean"][e] = base.mean(axis=0)[:, None]
    result = {name: value.astype(np.int64 if name == "count" else np.float32) for name, value in out.items()}
    return {**result, "order": ranking(result["mean"])}


def head_csv_rows(heads: dict[str, np.ndarray], e: int) -> list[dict[str, Any]]:
    """One emotion's head table in the official layout (layer-major)."""
    n_layers, n_heads = heads["mean"].shape[1:]
    return [{"layer": l, "head": h, "mean_importance": float(heads["mean"][e, l, h]),
             "std_importance": float(heads["std"][e, l, h]), "samples": int(heads["count"][e, l, h]),
             "baseline_mean": float(heads["baseline_mean"][e, l, h])}
            for l in range(n_layers) for h in range(n_heads)]


# ---------------------------------------------------------------------------------------------
# Long tail


def cumulative_share(scores: np.ndarray) -> np.ndarray:
    """Share of the positive total carried by the top 1..W components along the last axis.

    Positive parts are sorted in descending order; rows without any positive score give NaN."""
    positive = -np.sort(-np.maximum(np.asarray(scores, np.float64), 0.0), axis=-1)
    total = positive.sum(axis=-1, keepdims=True)
    return np.where(total > 0, np.cumsum(positive, axis=-1) / np.where(total > 0, total, 1.0), np.nan)


def components_for_share(cumulative: np.ndarray, level: float) -> np.ndarray:
    """Smallest k whose top-k share reaches `level` (float, NaN where the row is NaN)."""
    reached = cumulative >= level - 1e-12
    k = (reached.argmax(axis=-1) + 1).astype(np.float64)
    return np.where(np.isnan(cumulative[..., 0]), np.nan, k)


def _nan_stat(fn, values: np.ndarray) -> float | None:
    values = np.asarray(values, np.float64)
    return None if np.all(np.isnan(values)) else float(fn(values))


def long_tail(scores: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    """Concentration of one emotion's positive effect; scores [L, W] (C_mean or head importance).

    within_layer: mean top-k share over layers, median k reaching each share level, and the median over
    layers of top-1 / median |score| (the paper: top neurons give > 30x what lower-ranked ones do).
    pooled: the same count over all L*W components at once, and as a fraction of them."""
    scores = np.asarray(scores, np.float64)
    per_layer = cumulative_share(scores)
    pooled = cumulative_share(scores.reshape(-1))
    median_abs = np.median(np.abs(scores), axis=-1)
    ratio = np.where(median_abs > 0, scores.max(axis=-1) / np.where(median_abs > 0, median_abs, 1.0), np.nan)
    width, total = scores.shape[-1], scores.size
    return {
        "within_layer": {
            "share_top_k": {str(k): _nan_stat(np.nanmean, per_layer[:, k - 1]) for k in ks if k <= width},
            "k_for_share": {str(p): _nan_stat(np.nanmedian, components_for_share(per_layer, p)) for p in SHARE_LEVELS},
            "top1_over_median_abs": _nan_stat(np.nanmedian, ratio),
        },
        "pooled": {
            "components": int(total),
            "k_for_share": {str(p): _nan_stat(float, components_for_share(pooled, p)) for p in SHARE_LEVELS},
            "fraction_for_share": {str(p): _nan_stat(lambda k: k / total, components_for_share(pooled, p))
                                   for p in SHARE_LEVELS},
        },
    }


def long_tail_summary(neurons: dict[str, np.ndarray], heads: dict[str, np.ndarray]) -> dict[str, Any]:
    n_heads = heads["mean"].shape[-1]
    head_ks = sorted({min(2 ** i, n_heads) for i in range(n_heads.bit_length() + 1)})
    return {"definition": "shares of the positive part of C_mean (neurons) or of the mean same-layer importance "
                          "(heads), sorted in descending order",
            "neurons": {e: long_tail(neurons["C_mean"][i], NEURON_SHARE_KS) for i, e in enumerate(EMOTIONS)},
            "heads": {e: long_tail(heads["mean"][i], head_ks) for i, e in enumerate(EMOTIONS)}}


# ---------------------------------------------------------------------------------------------
# Figures


def save_png(fig: plt.Figure, path: Path) -> None:
    """Render to memory, then write atomically; no version stamp, so equal figures give equal bytes.
    Layouts are set by the callers (a tight bounding box would draw every figure twice)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def plot_long_tail(path: Path, neuron_scores: np.ndarray, head_scores: np.ndarray, model: str) -> None:
    """Cumulative share of the positive effect vs number of components, pooled over layers."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, scores, kind in ((axes[0], neuron_scores, "neurons (C_mean)"), (axes[1], head_scores, "heads (importance)")):
        for e, emotion in enumerate(EMOTIONS):
            share = cumulative_share(scores[e].reshape(-1))
            ax.plot(np.arange(1, share.size + 1), share, color=COLOURS[emotion], label=emotion)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.axhline(0.8, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("top-k components (all layers pooled)")
        ax.set_ylabel("share of the positive total")
        ax.set_title(kind)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Long tail of emotion components ({model})")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.85, wspace=0.25)
    save_png(fig, path)


def plot_head_importance(path: Path, head_mean: np.ndarray, model: str) -> None:
    """Mean same-layer head importance per emotion, layers x heads."""
    limit = float(np.abs(head_mean).max()) or 1.0
    fig, axes = plt.subplots(1, len(EMOTIONS), figsize=(2.0 * len(EMOTIONS), 0.16 * head_mean.shape[1] + 1.5),
                             sharey=True)
    for ax, e in zip(axes, range(len(EMOTIONS))):
        image = ax.imshow(head_mean[e], aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                          interpolation="nearest")
        ax.set_title(EMOTIONS[e], fontsize=9)
        ax.set_xlabel("head")
    axes[0].set_ylabel("layer")
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.1, top=0.88, wspace=0.15)
    fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, label="s - s' (same layer)")
    fig.suptitle(f"Head importance (S4b), {model}")
    save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# Stage


def fingerprint(ctx: StageContext) -> dict[str, Any]:
    return {"stage": STAGE, "model": model_hash(ctx),
            "activations": hash_path(ctx.run.path / capture.STAGE / "activations.npz"),
            "items": hash_path(ctx.run.path / capture.STAGE / "items.json"),
            "directions": hash_path(ctx.run.path / "directions" / "directions.npz")}


def _emotion_labels(table: dict[str, Any], path: Path) -> np.ndarray:
    emotion = np.asarray(table["emotion"], np.int32)
    counts = np.bincount(emotion, minlength=len(EMOTIONS))
    missing = [EMOTIONS[e] for e in range(len(EMOTIONS)) if counts[e] == 0]
    if missing:
        raise InputError(f"{path}: the capture holds no item of {', '.join(missing)}, so its neuron and head "
                         "scores are undefined")
    return emotion


def run(ctx: StageContext) -> dict[str, Any]:
    """Neuron and head statistics of every emotion from the capture and the directions."""
    geometry = upstream.directions(ctx)
    acts, table = capture.load(ctx)
    stamp = fingerprint(ctx)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    cfg, params = ctx.config, ctx.model.params
    emotion = _emotion_labels(table, ctx.run.path / capture.STAGE / "items.json")
    neurons = neuron_statistics(params, acts["g"], emotion, geometry["dirs_mlp"], cfg)
    heads = head_statistics(params, acts["z"], acts["resid_mid"], emotion, geometry["dirs_attn"], cfg)

    out = ctx.run.stage(STAGE)
    meta = {"model_hash": model_hash(ctx), "model_name": ctx.model.name, "rule": table["rule"],
            "emotions": list(EMOTIONS), "samples": "every captured item of the emotion (D2)"}
    write_npz(out / "neuron_stats.npz", neurons,
              meta={**meta, "ranking": "C_mean descending per layer (D6)",
                    "last_layer_direction": "post-norm (D3)"})
    write_npz(out / "head_stats.npz", heads,
              meta={**meta, "ranking": "mean importance descending per layer",
                    "score": "<N^post_l(m_l[t*]), v_attn>, closed-form head zeroing at all positions (T5)"})
    for e, name in enumerate(EMOTIONS):
        write_csv(out / f"head_importance_{name}.csv", head_csv_rows(heads, e), header=HEAD_CSV_COLUMNS)
    tail = long_tail_summary(neurons, heads)
    write_json(out / "long_tail.json", tail)
    plot_long_tail(out / "long_tail.png", neurons["C_mean"], heads["mean"], ctx.model.name)
    plot_head_importance(out / "head_importance.png", heads["mean"], ctx.model.name)

    top_heads = {}
    for e, name in enumerate(EMOTIONS):
        l, h = np.unravel_index(np.argmax(heads["mean"][e]), heads["mean"][e].shape)
        top_heads[name] = {"head": f"L{l}H{h}", "importance": float(heads["mean"][e, l, h])}
    summary = {"stage": STAGE, "rule": table["rule"], "samples": dict(zip(EMOTIONS, neurons["count"].tolist())),
               "top_head": top_heads,
               "neurons_for_80pct_pooled": {e: tail["neurons"][e]["pooled"]["k_for_share"]["0.8"] for e in EMOTIONS},
               "heads_for_80pct_pooled": {e: tail["heads"][e]["pooled"]["k_for_share"]["0.8"] for e in EMOTIONS}}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary
