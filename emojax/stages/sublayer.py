"""Stage S6a-S6d: causal influence of every attention and MLP sublayer on the final emotion score.

For emotion e, the branch output of sublayer (kind, l) at t* of the neutral prompt gets
alpha * sigma[kind, l] * w_e[kind, l] (w sign-aligned to v_ref,e), and the change of
<h_final[t*], v_ref,e> per unit dose is the influence I (method.md S6d, D8). The samples D_e are the
(scenario, event) pairs of the captured items of emotion e: their neutral prompts are shared by the
six emotions of a group, so each group is prefilled once and every (group, emotion) row reuses it.
Every perturbed run is a one-token suffix pass (T6): rows are scanned in fixed-size chunks (one
compiled program for all sublayers x alphas x rows), resumable through a ChunkedJob.

Outputs in `<run>/sublayer/`:
    influence.npz                   influence [6, 2, L, A] (kind 0 = attention, 1 = MLP), mean_over_alpha
                                    [6, 2, L], base [6], samples [6], alphas [A], sigma [2, L]
    importance_mean_over_alpha.csv  the official layout: emotion, kind, layer, I_final, I_final_normalized
    sigma_summary.json              {"attention_<l>": sigma, "mlp_<l>": sigma}
    influence_heatmap.png           mean-over-alpha influence per emotion and sublayer (residual order)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from emojax.data import EMOTIONS, SevRecord
from emojax.evaluation import figures
from emojax.method import prompts
from emojax.method.directions import sign_aligned
from emojax.method.hparams import INFLUENCE_ALPHAS
from emojax.model.config import ModelConfig
from emojax.parallel import to_host
from emojax.runs import ChunkedJob, hash_path, write_csv, write_json, write_npz
from emojax.runs.stage_record import digest, finished_summary, mark_finished, model_hash, records_digest
from emojax.scan import Prefix, capture_prefix, sublayer_influence
from emojax.stages import upstream
from emojax.stages.context import StageContext

STAGE = "sublayer"
KINDS = ("attention", "mlp")


class ScanRows(NamedTuple):
    """The influence samples: unique neutral prompts (groups) and one row per (group, emotion) item."""

    groups: list[tuple[SevRecord, str]]   # (record, valence) of each unique neutral prompt
    row_group: np.ndarray                 # [R] index into groups
    row_emotion: np.ndarray               # [R] index into EMOTIONS
    keys: list[str]                       # [R] item keys


def scan_rows(keys: Sequence[str], emotions: Sequence[int], records: Sequence[SevRecord]) -> ScanRows:
    """Group item keys `<skeleton_id>__<valence>__<emotion>` by their (scenario, event) pair."""
    by_id = {r.skeleton_id: r for r in records}
    group_index: dict[tuple[str, str], int] = {}
    groups, row_group = [], []
    for key in keys:
        skeleton_id, valence, _ = key.split("__")
        if skeleton_id not in by_id:
            raise ValueError(f"captured item {key!r} names scenario {skeleton_id!r}, which is not in the split")
        if (skeleton_id, valence) not in group_index:
            group_index[(skeleton_id, valence)] = len(groups)
            groups.append((by_id[skeleton_id], valence))
        row_group.append(group_index[(skeleton_id, valence)])
    order = np.argsort(np.asarray(row_group), kind="stable")  # rows of one group sit together
    return ScanRows(groups, np.asarray(row_group, np.int32)[order], np.asarray(emotions, np.int32)[order],
                    [keys[i] for i in order])


def sample_items(keys: Sequence[str], emotion: np.ndarray, per_emotion: int | None) -> tuple[list[str], np.ndarray]:
    """Up to `per_emotion` captured items of each emotion, evenly spaced over the capture so they span
    scenarios (every item when None), in capture order."""
    emotion = np.asarray(emotion, np.int32)
    if per_emotion is None:
        return list(keys), emotion
    chosen = np.sort(np.concatenate(list(upstream.spread_rows(emotion, per_emotion).values())))
    return [keys[i] for i in chosen], emotion[chosen]


def local_directions(dirs_attn: np.ndarray, dirs_mlp: np.ndarray, v_ref: np.ndarray) -> np.ndarray:
    """w [6, 2, L, D]: each emotion's attention and MLP directions sign-aligned to its v_ref (S6c)."""
    return np.stack([sign_aligned(dirs_attn, v_ref), sign_aligned(dirs_mlp, v_ref)], axis=1)


def prefill_groups(params: dict[str, Any], tokens: np.ndarray, mask: np.ndarray, *, config: ModelConfig,
                   batch: int, mesh: Mesh | None = None) -> Prefix:
    """Prefix of every prompt, captured in fixed-size batches (the last is padded) and concatenated
    on the host."""
    n = tokens.shape[0]
    parts = []
    for start in range(0, n, batch):
        rows = np.minimum(np.arange(start, start + batch), n - 1)
        part = capture_prefix(params, tokens[rows], mask[rows], config=config, mesh=mesh)
        parts.append(to_host(part.take(np.arange(min(batch, n - start)))))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1 if xs[0].ndim == 5 else 0), *parts)


def row_influence(params: dict[str, Any], prefix: Prefix, rows: ScanRows, w: np.ndarray, sigma: np.ndarray,
                  v_ref: np.ndarray, alphas: Sequence[float], *, config: ModelConfig, start: int,
                  stop: int, chunk_rows: int, mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """Influence [n, 2, L, A] and clean score [n] of rows start..stop-1, padded to `chunk_rows` rows
    so every chunk has the same shapes; `mesh` splits the rows over 'data'."""
    idx = np.minimum(np.arange(start, start + chunk_rows), stop - 1)
    emotion = rows.row_emotion[idx]
    taken = prefix.take(rows.row_group[idx])
    result = sublayer_influence(params, taken if mesh is None else taken.place(mesh), w[emotion], sigma, alphas,
                                v_ref[emotion], config=config)
    n = stop - start
    return {"influence": np.moveaxis(result.influence, -1, 0)[:n], "base": result.base[:n],
            "emotion": emotion[:n]}


def aggregate(influence: np.ndarray, base: np.ndarray, emotion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-emotion means over D_e: influence [6, 2, L, A], base [6], samples [6] (0 rows -> zeros)."""
    out_shape = (len(EMOTIONS),) + influence.shape[1:]
    mean = np.zeros(out_shape, np.float64)
    base_mean = np.zeros(len(EMOTIONS))
    samples = np.bincount(emotion, minlength=len(EMOTIONS))
    for e in range(len(EMOTIONS)):
        if samples[e]:
            mean[e] = influence[emotion == e].mean(axis=0)
            base_mean[e] = base[emotion == e].mean()
    return {"influence": mean.astype(np.float32), "base": base_mean.astype(np.float32), "samples": samples}


def importance_rows(mean_over_alpha: np.ndarray) -> list[dict[str, Any]]:
    """The official table: I_final = mean over alpha; I_final_normalized = I / sum over all 2L sublayers
    of the emotion (signed sum, reporting only)."""
    rows = []
    for e, emotion in enumerate(EMOTIONS):
        total = float(mean_over_alpha[e].sum())
        for k, kind in enumerate(KINDS):
            for layer, value in enumerate(mean_over_alpha[e, k]):
                rows.append({"emotion": emotion, "kind": kind, "layer": layer, "I_final": float(value),
                             "I_final_normalized": float(value) / total if total else 0.0})
    return rows


def sigma_summary(sigma: np.ndarray) -> dict[str, float]:
    """{"attention_<l>": ..., "mlp_<l>": ...} as in the official sigma_summary.json."""
    return {f"{kind}_{layer}": float(sigma[k, layer])
            for k, kind in enumerate(KINDS) for layer in range(sigma.shape[1])}


def fingerprint(ctx: StageContext, alphas: Sequence[float]) -> dict[str, Any]:
    return {"stage": STAGE, "model": model_hash(ctx), "dataset": records_digest(ctx.train),
            "directions": hash_path(ctx.run.path / "directions" / "directions.npz"),
            "items": hash_path(ctx.run.path / "capture" / "items.json"), "alphas": [float(a) for a in alphas],
            "date": ctx.settings.date_string, "batch_size": ctx.preset.batch_size,
            "per_emotion": ctx.preset.sublayer_per_emotion}


def influence_scan(ctx: StageContext, geometry: dict[str, np.ndarray], directory: Path, stamp: Any,
                   alphas: Sequence[float]) -> dict[str, Any]:
    """Per-emotion influence stats (`aggregate`, with sigma, row and group counts and the capture's
    rule) of the preset's samples with the read-out of `geometry["v_ref"]`, scanned as a resumable job
    in `directory` keyed by `stamp`."""
    captured = upstream.captured_items(ctx)
    cfg = ctx.config
    w = local_directions(geometry["dirs_attn"], geometry["dirs_mlp"], geometry["v_ref"])
    sigma = np.stack([geometry["sigma_attn"], geometry["sigma_mlp"]]).astype(np.float32)
    v_ref = geometry["v_ref"].astype(np.float32)
    rows = scan_rows(*sample_items(captured.keys, captured.emotion, ctx.preset.sublayer_per_emotion), ctx.train)
    if not rows.keys:
        raise ValueError(f"{STAGE}: the capture holds no items, so there are no influence samples")

    chunk_rows = min(ctx.preset.batch_size, len(rows.keys))
    job = ChunkedJob(directory, f"scan-{digest(stamp)}", len(rows.keys), chunk_rows, stamp)
    prefix = None
    if len(job.completed()) < job.n_chunks:
        batch = prompts.tokenize_prompts(ctx.model.tokenizer,
                                         [prompts.neutral_messages(r, v) for r, v in rows.groups],
                                         date_string=ctx.settings.date_string)
        prefix = prefill_groups(ctx.model.params, batch.tokens, batch.mask, config=cfg,
                                batch=min(ctx.preset.batch_size, len(rows.groups)), mesh=ctx.mesh)
    scanned = job.run(lambda start, stop: row_influence(
        ctx.model.params, prefix, rows, w, sigma, v_ref, alphas, config=cfg, start=start, stop=stop,
        chunk_rows=chunk_rows, mesh=ctx.mesh), desc="sublayer influence rows")
    return {**aggregate(scanned["influence"], scanned["base"], scanned["emotion"]), "sigma": sigma,
            "rows": len(rows.keys), "groups": len(rows.groups), "rule": captured.rule}


def run(ctx: StageContext, alphas: Sequence[float] = INFLUENCE_ALPHAS) -> dict[str, Any]:
    """Influence of every sublayer for every emotion, averaged over its samples and over alpha."""
    geometry = upstream.directions(ctx)
    stamp = fingerprint(ctx, alphas)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    stats = influence_scan(ctx, geometry, out, stamp, alphas)
    sigma = stats["sigma"]
    mean_over_alpha = stats["influence"].mean(axis=-1)
    missing = [EMOTIONS[e] for e in range(len(EMOTIONS)) if stats["samples"][e] == 0]
    if missing:
        logging.warning("%s: no samples for %s; their influence is set to 0 (uniform allocation)",
                        STAGE, ", ".join(missing))
    write_npz(out / "influence.npz", {
        "influence": stats["influence"], "mean_over_alpha": mean_over_alpha, "base": stats["base"],
        "samples": stats["samples"], "alphas": np.asarray(alphas, np.float32), "sigma": sigma},
        meta={"model_hash": model_hash(ctx), "model_name": ctx.model.name, "kinds": list(KINDS),
              "emotions": list(EMOTIONS), "rule": stats["rule"]})
    write_csv(out / "importance_mean_over_alpha.csv", importance_rows(mean_over_alpha))
    write_json(out / "sigma_summary.json", sigma_summary(sigma))
    figures.influence_heatmap(Path(out) / "influence_heatmap.png", mean_over_alpha, model=ctx.model.name)
    kind, layer = np.unravel_index(np.argmax(mean_over_alpha.mean(axis=0)), mean_over_alpha.shape[1:])
    summary = {"stage": STAGE, "rows": stats["rows"], "groups": stats["groups"], "rule": stats["rule"],
               "samples": dict(zip(EMOTIONS, stats["samples"].tolist())), "alphas": [float(a) for a in alphas],
               "peak_sublayer": f"{KINDS[kind]}_{layer}", "emotions_without_samples": missing}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary
