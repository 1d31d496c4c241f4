"""§14.1 validation of the component rankings: ablation (necessity) and enhancement (sufficiency) of the
top-k components of one layer, against random components of the same layer.

For emotion e, kind (neurons ranked by C_mean, heads by mean same-layer importance: the components
stage) and layer l:
- ablation, on the emotion prompts of a subset of I_e: zero the top-k components; neurons
  a_{l,j}[t*] <- 0, heads z_{l,h}[t] <- 0 at every real position;
- enhancement, on the neutral prompts of the same (scenario, event) pairs: add lambda * Delta_e to
  the top-k components; neurons at t*, heads at every position (as in S7);
- random control: `draws` random k-sets of the same layer, excluding that layer's top-k (a k with
  fewer than k other components has no control); in enhancement each random component gets its own
  Delta entries.

Read-outs, reported as the change from the unedited score of the same prompt:
- local: neurons <x_{l+1}[t*], v^{mlp,l}_e>, which moves by exactly -sum_j c_j under ablation and by
  lambda sum_j Delta_j beta_j under enhancement; heads s_l = <N^post_l(m_l[t*]), v^{attn,l}_e> by the
  closed form of T5 (exact for head sets: the contributions add). With post-sublayer norms (Gemma) the
  branch outputs are normed before the residual add, so neither read-out is a sum over the set: the
  neuron read-out is computed per set through the MLP's post norm (`neuron_set_local_changes`) and the
  head closed form sums the set's changes inside the attention's post norm; both stay exact;
- global: <h_final[t*], v_ref,e>; neuron edits are one-token suffix passes (T6), head edits at every
  position recompute from layer l (emojax.scan.recompute).
All variants of one (emotion, kind, layer, lambda) run as one vmapped sweep; identical random sets
are evaluated once.

Outputs in `<run>/validation/`:
    validation.csv   one row per (emotion, kind, layer, k, lambda, readout): emotion, kind, layer, k,
                     lambda (empty for ablation), readout, targeted_mean, targeted_sd (over prompts),
                     control_mean, control_sd, control_p5, control_p95 (over random draws of the
                     prompt-mean change), n (prompts), test, clean_mean (unedited score), draws
    ablation_vs_k.png, enhancement_vs_lambda.png (k = 4 neurons, 2 heads), enhancement_vs_k.png
                     (lambda = 1): targeted change vs the random 5-95% band, per emotion, kind and read-out
    the resumable per-(emotion, kind, layer) job
"""
from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from emojax.data import EMOTIONS, SevRecord  # noqa: E402
from emojax.method import prompts  # noqa: E402
from emojax.method.hparams import map_layer  # noqa: E402
from emojax.model.config import ModelConfig  # noqa: E402
from emojax.model import block  # noqa: E402
from emojax.runs import ChunkedJob, InputError, hash_path, write_csv  # noqa: E402
from emojax.runs.stage_record import (digest, finished_summary, mark_finished, model_hash, records_digest)  # noqa: E402
from emojax.scan import (Prefix, capture_prefix, clean_scores, head_edit_scores,  # noqa: E402
                         head_set_ablation_same_layer, neuron_edit_scores, neuron_write_alignment)
from emojax.scan.neurons import neuron_set_local_changes  # noqa: E402
from emojax.stages import components, upstream  # noqa: E402
from emojax.stages.context import StageContext  # noqa: E402

STAGE = "validation"
KINDS = ("neuron", "head")
READOUTS = ("local", "global")
NEURON_KS = (1, 2, 4, 8, 16, 32, 64)
LAMBDAS = (0.5, 1.0, 2.0, 4.0)
# The original's layer 13 (strongest heads, e.g. L13H19) and 22 (peak of the influence plateau),
# moved to the same fractional depth of the model at hand (method.md §8).
ORIGINAL_LAYERS = (13, 22)
PROMPTS_PER_EMOTION = 16
# k of the enhancement-vs-lambda plot and of the summary: the paper's plateau (neurons) and k = 2 (heads).
REFERENCE_K = {"neuron": 4, "head": 2}
COLUMNS = ("emotion", "kind", "layer", "k", "lambda", "readout", "targeted_mean", "targeted_sd", "control_mean",
           "control_sd", "control_p5", "control_p95", "n", "test", "clean_mean", "draws")


def head_ks(n_heads: int) -> tuple[int, ...]:
    """{1, 2, 4, ..., H}: powers of two below H, then H."""
    return tuple(sorted({min(2 ** i, n_heads) for i in range(n_heads.bit_length() + 1)}))


def grid_ks(kind: str, config: ModelConfig) -> tuple[int, ...]:
    if kind == "neuron":
        return tuple(k for k in NEURON_KS if k <= config.d_ff)
    return head_ks(config.n_heads)


def default_layers(config: ModelConfig) -> tuple[int, ...]:
    return tuple(sorted({map_layer(l, config.n_layers) for l in ORIGINAL_LAYERS}))


# ---------------------------------------------------------------------------------------------
# Component sets


@dataclasses.dataclass(frozen=True)
class ComponentSets:
    """Targeted and random k-sets of one layer as 0/1 masks over its W components."""

    ks: tuple[int, ...]
    targeted: np.ndarray      # [K, W]
    random: np.ndarray        # [K, R, W]; all zero where the k has no control
    has_control: np.ndarray   # [K] bool: at least k components lie outside the top-k


def component_sets(order: np.ndarray, ks: Sequence[int], draws: int, rng: np.random.Generator) -> ComponentSets:
    """Top-k sets from `order` (ids by score, descending) and `draws` random k-sets from the rest."""
    width = len(order)
    targeted = np.zeros((len(ks), width), np.float32)
    random = np.zeros((len(ks), draws, width), np.float32)
    has_control = np.zeros(len(ks), bool)
    for i, k in enumerate(ks):
        targeted[i, order[:k]] = 1.0
        rest = order[k:]
        if len(rest) >= k:
            has_control[i] = True
            for d in range(draws):
                random[i, d, rng.choice(rest, size=k, replace=False)] = 1.0
    return ComponentSets(tuple(ks), targeted, random, has_control)


def unit_rng(seed: int, emotion: int, kind: str, layer: int) -> np.random.Generator:
    """Random controls depend on (seed, emotion, kind, layer) only, not on which units ran before."""
    return np.random.default_rng([seed, emotion, zlib.crc32(kind.encode()), layer])


ScoreFn = Callable[[np.ndarray], np.ndarray]


def on_unique(masks: np.ndarray, score: ScoreFn) -> np.ndarray:
    """score(masks) [V, n], evaluating each distinct mask once."""
    unique, inverse = np.unique(masks, axis=0, return_inverse=True)
    return score(unique)[inverse.reshape(-1)]


def scored_sets(sets: ComponentSets, score: ScoreFn) -> tuple[np.ndarray, np.ndarray]:
    """(targeted changes [K, n], random changes [K, R, n]) of one sweep over every set."""
    n_k, draws, width = sets.random.shape
    masks = np.concatenate([sets.targeted, sets.random.reshape(n_k * draws, width)])
    changes = on_unique(masks, score)
    return changes[:n_k], changes[n_k:].reshape(n_k, draws, -1)


# ---------------------------------------------------------------------------------------------
# Read-outs: each returns the change from the unedited score, [S, n] for masks [S, W]


@dataclasses.dataclass(frozen=True)
class Unit:
    """What one (emotion, kind, layer) needs: prompts, directions and its layer's difference vector."""

    params: dict[str, Any]
    config: ModelConfig
    layer: int
    emotion_prefix: Prefix       # emotion prompts (ablation), with the whole residual stream
    neutral_prefix: Prefix       # neutral prompts of the same pairs (enhancement)
    v_mlp: np.ndarray            # [L, D] v^{mlp,.}_e (read at layer l)
    v_attn: np.ndarray           # [L, D] v^{attn,.}_e (the closed form reads layer l)
    v_ref: np.ndarray            # [D]
    delta: np.ndarray            # [W] Delta_e at this layer (F for neurons, H*Dh for heads)


def neuron_local(unit: Unit, lam: float | None) -> ScoreFn:
    if unit.config.post_norms:
        return _neuron_local_through_norm(unit, lam)
    beta = neuron_write_alignment(unit.params, unit.v_mlp)[unit.layer].astype(np.float64)
    if lam is None:
        contributions = np.asarray(unit.emotion_prefix.g[:, unit.layer], np.float64) * beta  # [n, F]
        return lambda masks: -(masks @ contributions.T)
    n = unit.neutral_prefix.batch
    shift = lam * np.asarray(unit.delta, np.float64) * beta  # the same for every prompt
    return lambda masks: np.repeat((masks @ shift)[:, None], n, axis=1)


def _neuron_local_through_norm(unit: Unit, lam: float | None) -> ScoreFn:
    """The local read-out under a post-normed MLP (Gemma): o^mlp = N_post(a W_down) is not linear in the
    neurons, so each set's change is computed exactly through the norm (not as a sum over its members)."""
    prefix = unit.emotion_prefix if lam is None else unit.neutral_prefix
    g = np.asarray(prefix.g[:, unit.layer], np.float32)

    def score(masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, np.float32)
        if lam is None:
            scale, add = 1.0 - masks, None
        else:
            scale, add = np.ones_like(masks), lam * masks * unit.delta[None]
        return neuron_set_local_changes(unit.params, g, unit.layer, unit.v_mlp[unit.layer], scale=scale, add=add,
                                        config=unit.config)

    return score


def neuron_global(unit: Unit, lam: float | None) -> ScoreFn:
    prefix = unit.emotion_prefix if lam is None else unit.neutral_prefix
    clean = clean_scores(prefix, unit.v_ref)

    def score(masks: np.ndarray) -> np.ndarray:
        if lam is None:
            edited = neuron_edit_scores(unit.params, prefix, unit.layer, scale=1.0 - masks, readout=unit.v_ref,
                                        config=unit.config, positions="last")
        else:
            edited = neuron_edit_scores(unit.params, prefix, unit.layer, scale=np.ones_like(masks),
                                        add=lam * masks * unit.delta[None], readout=unit.v_ref, config=unit.config,
                                        positions="last")
        return edited - clean[None]

    return score


def head_local(unit: Unit, lam: float | None) -> ScoreFn:
    cfg, layer = unit.config, unit.layer
    prefix = unit.emotion_prefix if lam is None else unit.neutral_prefix
    z, mid = np.asarray(prefix.z), np.asarray(prefix.resid_mid)
    # Enhancement as a "replacement": z_h <- z_h + lam * Delta_h is ablation towards z + lam * Delta.
    replacement = None
    if lam is not None:
        replacement = z.copy()
        replacement[:, layer] += lam * unit.delta

    def score(masks: np.ndarray) -> np.ndarray:
        # A power-of-two number of sets (the last repeated): the set count is part of the compiled
        # shape, so sweeps of similar size then share one program.
        sets = np.zeros((1 << (len(masks) - 1).bit_length(), cfg.n_layers, cfg.n_heads), np.float32)
        sets[:, layer] = masks[np.minimum(np.arange(len(sets)), len(masks) - 1)]
        edited, base = head_set_ablation_same_layer(unit.params, z, mid, unit.v_attn, sets, config=cfg,
                                                    replacement=replacement, chunk=8)
        return edited[: len(masks), :, layer] - base[None, :, layer]

    return score


def head_global(unit: Unit, lam: float | None) -> ScoreFn:
    cfg = unit.config
    prefix = unit.emotion_prefix if lam is None else unit.neutral_prefix
    clean = clean_scores(prefix, unit.v_ref)
    delta = unit.delta.reshape(cfg.n_heads, cfg.head_dim)

    def score(masks: np.ndarray) -> np.ndarray:
        if lam is None:
            edited = head_edit_scores(unit.params, prefix, unit.layer, scale=1.0 - masks, readout=unit.v_ref,
                                      config=cfg, positions="all")
        else:
            edited = head_edit_scores(unit.params, prefix, unit.layer, scale=np.ones_like(masks),
                                      add=lam * masks[:, :, None] * delta[None], readout=unit.v_ref, config=cfg,
                                      positions="all")
        return edited - clean[None]

    return score


READOUT_FNS = {("neuron", "local"): neuron_local, ("neuron", "global"): neuron_global,
               ("head", "local"): head_local, ("head", "global"): head_global}


def clean_mean(unit: Unit, kind: str, readout: str, lam: float | None) -> float:
    """Mean unedited score of the prompts a test edits."""
    prefix = unit.emotion_prefix if lam is None else unit.neutral_prefix
    if readout == "global":
        return float(clean_scores(prefix, unit.v_ref).mean())
    if kind == "neuron":
        return float((np.asarray(prefix.resid_post[:, unit.layer]) @ unit.v_mlp[unit.layer]).mean())
    gain = unit.params["layers"]["mlp_norm"][unit.layer]
    mlp_input = block.norm(jnp.asarray(prefix.resid_mid[:, unit.layer]), gain, unit.config)
    return float((np.asarray(mlp_input) @ unit.v_attn[unit.layer]).mean())


def summary_rows(targeted: np.ndarray, random: np.ndarray, sets: ComponentSets, base: dict[str, Any]
                 ) -> list[dict[str, Any]]:
    """Table rows of one sweep: targeted [K, n] and random [K, R, n] changes."""
    rows = []
    nan = float("nan")
    for i, k in enumerate(sets.ks):
        draw_means = random[i].mean(axis=-1) if sets.has_control[i] else np.zeros(0)
        controls = (float(draw_means.mean()), float(draw_means.std()), float(np.percentile(draw_means, 5)),
                    float(np.percentile(draw_means, 95))) if draw_means.size else (nan, nan, nan, nan)
        rows.append({**base, "k": int(k), "targeted_mean": float(targeted[i].mean()),
                     "targeted_sd": float(targeted[i].std()), "control_mean": controls[0], "control_sd": controls[1],
                     "control_p5": controls[2], "control_p95": controls[3], "n": int(targeted.shape[-1]),
                     "draws": int(draw_means.size)})
    return rows


def unit_rows(unit: Unit, emotion: str, kind: str, sets: ComponentSets, lambdas: Sequence[float]
              ) -> list[dict[str, Any]]:
    """Every ablation and enhancement row of one (emotion, kind, layer)."""
    rows = []
    for lam in (None, *lambdas):
        for readout in READOUTS:
            targeted, random = scored_sets(sets, READOUT_FNS[(kind, readout)](unit, lam))
            base = {"emotion": emotion, "kind": kind, "layer": unit.layer, "lambda": lam, "readout": readout,
                    "test": "ablation" if lam is None else "enhancement",
                    "clean_mean": clean_mean(unit, kind, readout, lam)}
            rows += summary_rows(targeted, random, sets, base)
    return [{c: row[c] for c in COLUMNS} for row in rows]


# ---------------------------------------------------------------------------------------------
# Prompts


def select_rows(emotion: np.ndarray, per_emotion: int) -> dict[int, np.ndarray]:
    """Per emotion, up to `per_emotion` of its captured rows, evenly spaced (so they span scenarios)."""
    chosen = upstream.spread_rows(emotion, per_emotion)
    for e, rows in chosen.items():
        if rows.size == 0:
            raise InputError(f"{STAGE}: the capture holds no item of {EMOTIONS[e]}")
    return chosen


def prompt_pairs(keys: Sequence[str], records: Sequence[SevRecord]) -> list[tuple[list, list]]:
    """(emotion messages, neutral messages) of each item key `<skeleton_id>__<valence>__<emotion>`."""
    by_id = {r.skeleton_id: r for r in records}
    pairs = []
    for key in keys:
        skeleton_id, valence, emotion = key.split("__")
        if skeleton_id not in by_id:
            raise InputError(f"{STAGE}: captured item {key!r} names scenario {skeleton_id!r}, not in the train split")
        record = by_id[skeleton_id]
        pairs.append((prompts.emotion_messages(record, emotion, valence=valence),
                      prompts.neutral_messages(record, valence)))
    return pairs


# ---------------------------------------------------------------------------------------------
# Figures


def _band_panel(ax: Any, rows: list[dict[str, Any]], x_key: str, layers: Sequence[int]) -> None:
    """Targeted change (line) and the random 5-95% band (shaded) with its mean (dotted), per layer;
    x on a log2 scale drawn as positions, which renders much faster than a log axis."""
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(len(layers), 1)))
    for colour, layer in zip(colours, layers):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r[x_key])
        if not mine:
            continue
        x = np.log2([r[x_key] for r in mine])
        ax.plot(x, [r["targeted_mean"] for r in mine], "o-", color=colour, ms=3, label=f"top-k, layer {layer}")
        lo, hi = np.array([r["control_p5"] for r in mine]), np.array([r["control_p95"] for r in mine])
        ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)
        ax.plot(x, [r["control_mean"] for r in mine], ":", color=colour, lw=1)
    ax.axhline(0.0, color="grey", lw=0.6)


def plot_curves(path: Path, rows: list[dict[str, Any]], test: str, x_key: str, keep: Callable[[dict], bool],
                title: str) -> None:
    """Score changes per (kind, read-out) (rows of panels) and emotion (columns), vs k or lambda."""
    chosen = [r for r in rows if r["test"] == test and keep(r)]
    layers = sorted({r["layer"] for r in chosen})
    panels = [(kind, readout) for kind in KINDS for readout in READOUTS]
    fig, axes = plt.subplots(len(panels), len(EMOTIONS), figsize=(2.4 * len(EMOTIONS), 1.9 * len(panels)),
                             squeeze=False)
    for i, (kind, readout) in enumerate(panels):
        for j, emotion in enumerate(EMOTIONS):
            ax = axes[i, j]
            mine = [r for r in chosen if r["kind"] == kind and r["readout"] == readout and r["emotion"] == emotion]
            _band_panel(ax, mine, x_key, layers)
            ticks = sorted({r[x_key] for r in mine})
            ax.set_xticks(np.log2(ticks), [f"{t:g}" for t in ticks], fontsize=6)
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(emotion, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{kind} {readout}\nscore change", fontsize=7)
            if i == len(panels) - 1:
                ax.set_xlabel("lambda" if x_key == "lambda" else "k", fontsize=7)
    axes[0, -1].legend(fontsize=5, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.07, top=0.91, wspace=0.35, hspace=0.4)
    components.save_png(fig, path)


def write_plots(out: Path, rows: list[dict[str, Any]], model: str) -> None:
    refs = ", ".join(f"{k} {kind}s" for kind, k in REFERENCE_K.items())
    plot_curves(out / "ablation_vs_k.png", rows, "ablation", "k", lambda r: True,
                f"Ablating the top-k components vs random ones of the same layer, emotion prompts ({model})")
    plot_curves(out / "enhancement_vs_lambda.png", rows, "enhancement", "lambda",
                lambda r: r["k"] == REFERENCE_K[r["kind"]],
                f"Adding lambda*Delta to the top components ({refs}) vs random ones, neutral prompts ({model})")
    plot_curves(out / "enhancement_vs_k.png", rows, "enhancement", "k", lambda r: r["lambda"] == 1.0,
                f"Adding 1*Delta to the top-k components vs random ones, neutral prompts ({model})")


# ---------------------------------------------------------------------------------------------
# Stage


def fingerprint(ctx: StageContext, layers: Sequence[int], per_emotion: int, draws: int,
                lambdas: Sequence[float]) -> dict[str, Any]:
    run = ctx.run.path
    return {"stage": STAGE, "model": model_hash(ctx), "dataset": records_digest(ctx.train),
            "items": hash_path(run / "capture" / "items.json"),
            "directions": hash_path(run / "directions" / "directions.npz"),
            "neurons": hash_path(run / components.STAGE / "neuron_stats.npz"),
            "heads": hash_path(run / components.STAGE / "head_stats.npz"),
            "layers": list(layers), "prompts_per_emotion": per_emotion, "draws": draws,
            "lambdas": [float(x) for x in lambdas], "seed": ctx.settings.seed, "date": ctx.settings.date_string}


def run(ctx: StageContext, layers: Sequence[int] | None = None, prompts_per_emotion: int = PROMPTS_PER_EMOTION,
        draws: int | None = None, lambdas: Sequence[float] = LAMBDAS) -> dict[str, Any]:
    """Ablation and enhancement curves for every emotion, kind and validation layer.

    layers: default the original's layers 13 and 22 at the same fractional depth; draws: random
    control sets per k, at least `ctx.preset.validation_draws`."""
    cfg = ctx.config
    layers = default_layers(cfg) if layers is None else tuple(int(l) for l in layers)
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad or not layers:
        raise InputError(f"{STAGE}: layers {list(layers)} must be in 0..{cfg.n_layers - 1}")
    draws = ctx.preset.validation_draws if draws is None else int(draws)
    if draws < ctx.preset.validation_draws:
        raise InputError(f"{STAGE}: {draws} random draws; the preset asks for at least {ctx.preset.validation_draws}")
    if prompts_per_emotion < 1:
        raise InputError(f"{STAGE}: prompts_per_emotion={prompts_per_emotion}; expected at least 1")
    geometry = upstream.directions(ctx)
    neuron_order = components.ranking(upstream.neuron_scores(ctx))
    head_order = components.ranking(upstream.head_scores(ctx))
    captured = upstream.captured_items(ctx)
    stamp = fingerprint(ctx, layers, prompts_per_emotion, draws, lambdas)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)

    chosen = select_rows(captured.emotion, prompts_per_emotion)
    keys = [captured.keys[i] for e in range(len(EMOTIONS)) for i in chosen[e]]
    pairs = prompt_pairs(keys, ctx.train)
    # Emotion and neutral prompts at one width, so each compiled sweep serves both kinds of prompt.
    batch = prompts.tokenize_prompts(ctx.model.tokenizer, [p[0] for p in pairs] + [p[1] for p in pairs],
                                     date_string=ctx.settings.date_string)
    offsets = np.cumsum([0] + [len(chosen[e]) for e in range(len(EMOTIONS))])
    units = [(e, kind, layer) for e in range(len(EMOTIONS)) for kind in KINDS for layer in layers]
    prefixes: dict[int, tuple[Prefix, Prefix]] = {}

    def prefixes_of(e: int) -> tuple[Prefix, Prefix]:
        if e not in prefixes:
            prefixes.clear()  # units run emotion by emotion: keep one emotion's prompts in memory
            rows = np.arange(offsets[e], offsets[e + 1])
            prefixes[e] = tuple(capture_prefix(ctx.model.params, batch.tokens[r], batch.mask[r], config=cfg,
                                               keep_sequence=True, mesh=ctx.mesh) for r in (rows, rows + len(pairs)))
        return prefixes[e]

    def compute(start: int, stop: int) -> list[dict[str, Any]]:
        rows = []
        for e, kind, layer in units[start:stop]:
            emotion_prefix, neutral_prefix = prefixes_of(e)
            delta = geometry["delta_mlp" if kind == "neuron" else "delta_attn"][e, layer]
            unit = Unit(ctx.model.params, cfg, layer, emotion_prefix, neutral_prefix, geometry["dirs_mlp"][e],
                        geometry["dirs_attn"][e], geometry["v_ref"][e], np.asarray(delta, np.float32))
            order = (neuron_order if kind == "neuron" else head_order)[e, layer]
            sets = component_sets(order, grid_ks(kind, cfg), draws, unit_rng(ctx.settings.seed, e, kind, layer))
            rows += unit_rows(unit, EMOTIONS[e], kind, sets, lambdas)
        return rows

    job = ChunkedJob(out, f"curves-{digest(stamp)}", len(units), 1, stamp)
    rows = job.run(compute, desc="validation units")
    write_csv(out / "validation.csv", rows, header=COLUMNS)
    write_plots(out, rows, ctx.model.name)
    summary = {"stage": STAGE, "layers": list(layers), "draws": draws, "lambdas": [float(x) for x in lambdas],
               "prompts": {EMOTIONS[e]: int(len(chosen[e])) for e in range(len(EMOTIONS))},
               "headline": headline(rows)}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Global-score change at the reference k (ablation; enhancement at lambda 1), targeted vs control,
    averaged over emotions and layers, per kind."""
    result = {}
    for kind in KINDS:
        for test, lam in (("ablation", None), ("enhancement", 1.0)):
            mine = [r for r in rows if r["kind"] == kind and r["test"] == test and r["readout"] == "global"
                    and r["k"] == REFERENCE_K[kind] and r["lambda"] == lam]
            if mine:
                result[f"{kind}_{test}_k{REFERENCE_K[kind]}"] = {
                    "targeted_mean": float(np.mean([r["targeted_mean"] for r in mine])),
                    "control_mean": float(np.nanmean([r["control_mean"] for r in mine]))}
    return result
