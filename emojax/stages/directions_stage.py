"""S2, S5, S6a, S6b from the fused capture: directions, difference vectors, residual scale, v_ref, geometry.

From the last-token states of the emotion prompts (capture stage), over complete groups [D2]:

- dirs_attn [6, L, D]  unit emotion directions of r^{attn,l} = resid_mid[l]
- dirs_mlp  [6, L, D]  unit emotion directions of r^{mlp,l} = resid_post[l], with layer L-1 replaced by
                       the post-norm `final` state [D3]
- delta_mlp [6, L, F], delta_attn [6, L, H*Dh]  un-normalised difference vectors at g and z (S5)
- sigma_attn [L], sigma_mlp [L]  mean RMS of the same states (S6a; mlp L-1 measured post-norm)
- v_ref [6, D]  reference direction from the transferred reference band (S6b)

Geometry (geometry.json and PNGs): each emotion's 2L x 2L cosine matrix in residual order, the 6 x 6
cross-emotion cosines per layer and kind, and per-layer separability by leave-one-scenario-out nearest
centroid (chance 1/6), measured two ways:

- "raw": states minus the training mean, nothing known about the held-out scenario. This is the view
  of the paper's PCA figures: the emotion must stand out against the scenario content, which happens
  only from some depth on.
- "group-centred": each state minus the mean of its own group (`emojax.method.directions.separability`).
  Centring removes the content, so this measures how context-agnostic the emotion offset is; at t* of
  the emotion prompt it can be high from the first layer on, since the offset is the instruction word.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emojax.data import EMOTIONS
from emojax.evaluation.geometry_plots import (plot_cross_emotion, plot_pca, plot_separability, plot_sublayer_cosines,
                                          sublayer_labels)
from emojax.method import directions as dirs_lib
from emojax.method.hparams import map_layer
from emojax.runs import InputError, check_array_file, read_npz, write_json, write_npz
from emojax.runs.manifest import hash_file
from emojax.runs.stage_record import finished_summary, mark_finished, model_hash
from emojax.stages import capture
from emojax.stages.context import StageContext

STAGE = "directions"
PCA_LAYERS_ORIGINAL = (1, 9, 12, 27)   # the paper's PCA layers on the 28-layer original (method.md S7)


def mlp_states(resid_post: np.ndarray, final: np.ndarray) -> np.ndarray:
    """r^{mlp,l} for every layer: resid_post, except the last layer's post-norm `final` state (D3)."""
    states = np.array(resid_post, np.float32, copy=True)
    states[:, -1] = final
    return states


def groups_of(table: dict[str, Any]) -> dirs_lib.Groups:
    groups = dirs_lib.Groups(np.asarray(table["emotion"]), np.asarray(table["group"]))
    groups.check()
    return groups


def compute_vectors(acts: dict[str, np.ndarray], groups: dirs_lib.Groups, ref_layers: range) -> dict[str, np.ndarray]:
    """The arrays of directions.npz from captured activations (see the module docstring)."""
    attn_states = acts["resid_mid"]
    mlp = mlp_states(acts["resid_post"], acts["final"])
    dirs_attn = dirs_lib.emotion_directions(attn_states, groups)
    dirs_mlp = dirs_lib.emotion_directions(mlp, groups)
    return {
        "dirs_attn": dirs_attn,
        "dirs_mlp": dirs_mlp,
        "delta_mlp": dirs_lib.difference_vectors(acts["g"], groups),
        "delta_attn": dirs_lib.difference_vectors(acts["z"], groups),
        "sigma_attn": dirs_lib.residual_scale(attn_states, groups),
        "sigma_mlp": dirs_lib.residual_scale(mlp, groups),
        "v_ref": dirs_lib.reference_direction(dirs_attn, dirs_mlp, ref_layers),
    }


def sublayer_stack(dirs_attn: np.ndarray, dirs_mlp: np.ndarray) -> np.ndarray:
    """[6, 2L, D]: each emotion's directions in residual order attn_0, mlp_0, attn_1, ..."""
    e, n_layers, d = dirs_attn.shape
    return np.stack([dirs_attn, dirs_mlp], axis=2).reshape(e, 2 * n_layers, d)


def raw_separability(states: np.ndarray, groups: dirs_lib.Groups, scenario: np.ndarray) -> np.ndarray:
    """Leave-one-scenario-out nearest-centroid accuracy per layer on mean-removed raw states: [L].

    For each held-out scenario, the emotion centroids and the overall mean come from the other
    scenarios' complete-group items; a held-out item goes to the centroid of highest cosine with
    (state - mean). Per-(scenario, emotion) sums make every fold O(6 L D).
    """
    keep = groups.complete_mask()
    x = np.asarray(states, np.float64)[keep]
    emo, scen = groups.emotion[keep], np.asarray(scenario)[keep]
    scenario_ids, s_index = np.unique(scen, return_inverse=True)
    sums = np.zeros((scenario_ids.size, len(EMOTIONS)) + x.shape[1:])
    np.add.at(sums, (s_index, emo), x)
    counts = np.zeros((scenario_ids.size, len(EMOTIONS)))
    np.add.at(counts, (s_index, emo), 1)
    total, total_counts = sums.sum(axis=0), counts.sum(axis=0)
    correct = np.zeros(x.shape[1])
    for s in range(scenario_ids.size):
        rest, rest_counts = total - sums[s], total_counts - counts[s]
        if (rest_counts == 0).any():
            continue
        mean = rest.sum(axis=0) / rest_counts.sum()
        centroids = rest / rest_counts[:, None, None] - mean
        test = s_index == s
        sims = np.einsum("nld,eld->nle", dirs_lib.unit(x[test] - mean), dirs_lib.unit(centroids))
        correct += (sims.argmax(axis=-1) == emo[test][:, None]).sum(axis=0)
    return (correct / max(len(x), 1)).astype(np.float32)


def separability_curves(attn_states: np.ndarray, mlp: np.ndarray, groups: dirs_lib.Groups,
                        scenario: np.ndarray) -> dict[str, np.ndarray]:
    """{attn, mlp}: raw-state separability; {attn, mlp}_group_centred: after group centring."""
    curves = {}
    for kind, states in (("attn", attn_states), ("mlp", mlp)):
        curves[kind] = raw_separability(states, groups, scenario)
        curves[f"{kind}_group_centred"] = dirs_lib.separability(states, groups, scenario)
    return curves


def first_layer_at_least(curve: np.ndarray, level: float) -> int | None:
    hits = np.flatnonzero(np.asarray(curve) >= level)
    return int(hits[0]) if hits.size else None


def geometry(vectors: dict[str, np.ndarray], separability: dict[str, np.ndarray]) -> dict[str, Any]:
    """Cosine matrices, separability curves and the summary figures compared with method.md §10."""
    dirs_attn, dirs_mlp = vectors["dirs_attn"], vectors["dirs_mlp"]
    n_layers = dirs_attn.shape[1]
    sub = np.stack([dirs_lib.cosine_matrix(m) for m in sublayer_stack(dirs_attn, dirs_mlp)])
    cross = {kind: np.stack([dirs_lib.cosine_matrix(d[:, l]) for l in range(n_layers)])
             for kind, d in (("attn", dirs_attn), ("mlp", dirs_mlp))}
    off_diagonal = ~np.eye(sub.shape[-1], dtype=bool)
    same_layer = np.einsum("eld,eld->el", dirs_attn, dirs_mlp)
    mlp_to_next = np.einsum("eld,eld->el", dirs_mlp[:, :-1], dirs_attn[:, 1:])
    pair = (EMOTIONS.index("anger"), EMOTIONS.index("disgust"))
    upper = np.triu(np.ones((6, 6), bool), 1)
    others = upper.copy()
    others[pair] = False
    depth = max(n_layers - 1, 1)
    landmarks = {}
    for kind, curve in separability.items():
        landmarks[kind] = {"max": float(np.max(curve)), "argmax_layer": int(np.argmax(curve))}
        for level in (0.5, 0.8, 0.9):
            layer = first_layer_at_least(curve, level)
            landmarks[kind][f"first_layer_at_{int(level * 100)}pct"] = layer
            landmarks[kind][f"first_fraction_at_{int(level * 100)}pct"] = None if layer is None else layer / depth
    return {
        "sublayer_order": sublayer_labels(n_layers),
        "sublayer_cosine": {e: sub[i] for i, e in enumerate(EMOTIONS)},
        "cross_emotion_cosine": cross,
        "separability": {**separability, "chance": 1 / len(EMOTIONS),
                         "method": "leave-one-scenario-out nearest centroid (cosine); attn/mlp: raw states "
                                   "minus the training mean; *_group_centred: states minus their group mean"},
        "summary": {
            "sublayer_offdiag_mean": float(sub[:, off_diagonal].mean()),
            "sublayer_offdiag_mean_per_emotion": {e: float(sub[i][off_diagonal].mean())
                                                  for i, e in enumerate(EMOTIONS)},
            "attn_vs_mlp_same_layer_mean": float(same_layer.mean()),
            "mlp_vs_next_attn_mean": float(mlp_to_next.mean()),
            "anger_disgust_mlp_by_layer": cross["mlp"][:, pair[0], pair[1]],
            "other_pairs_mlp_mean_by_layer": cross["mlp"][:, others].mean(axis=1),
            "separability_landmarks": landmarks,
        },
    }


def centred_states(states: np.ndarray, groups: dirs_lib.Groups) -> tuple[np.ndarray, np.ndarray]:
    """(group-centred states of complete-group items, their emotion indices) for the PCA plots."""
    keep = groups.complete_mask()
    values, group = states[keep].astype(np.float64), groups.group[keep]
    ids, inverse = np.unique(group, return_inverse=True)
    sums = np.zeros((ids.size,) + values.shape[1:])
    np.add.at(sums, inverse, values)
    means = sums / np.bincount(inverse)[(...,) + (None,) * (values.ndim - 1)]
    return values - means[inverse], groups.emotion[keep]


def plot_layers(n_layers: int) -> list[int]:
    return sorted({map_layer(l, n_layers) for l in PCA_LAYERS_ORIGINAL})


def fingerprint(ctx: StageContext) -> dict[str, Any]:
    activations = ctx.run.path / capture.STAGE / "activations.npz"
    return {"stage": STAGE, "model": model_hash(ctx), "activations": hash_file(activations),
            "ref_layers": list(ctx.hparams.ref_layers)}


def run(ctx: StageContext) -> dict[str, Any]:
    """Capture (if not done), then compute and write directions.npz, geometry.json and the plots."""
    capture.run(ctx)
    stamp = fingerprint(ctx)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    acts, table = capture.load(ctx)
    groups = groups_of(table)
    scenario = np.asarray(table["scenario"])
    ref_layers = ctx.hparams.ref_layers
    vectors = compute_vectors(acts, groups, ref_layers)
    mlp = mlp_states(acts["resid_post"], acts["final"])
    separability = separability_curves(acts["resid_mid"], mlp, groups, scenario)
    geo = geometry(vectors, separability)
    n_complete = int(groups.complete_ids().size)
    out = ctx.run.stage(STAGE)
    meta = {"model_hash": model_hash(ctx), "model_name": ctx.model.name, "rule": table["rule"],
            "requested_rule": table["requested_rule"], "fallback": table["fallback"],
            "complete_groups": n_complete, "ref_layers": [ref_layers.start, ref_layers.stop - 1],
            "final_layer_state": "post-norm (D3)", "emotions": list(EMOTIONS)}
    write_npz(out / "directions.npz", vectors, meta=meta)
    write_json(out / "geometry.json", {**meta, **geo})

    layers = plot_layers(ctx.config.n_layers)
    keep = groups.complete_mask()
    centred, emotion = centred_states(mlp[:, layers], groups)
    plot_pca({"raw": {l: mlp[keep, l] for l in layers},
              "group-centred": {l: centred[:, i] for i, l in enumerate(layers)}}, emotion,
             out / "pca_mlp_states.png", f"MLP states at t* coloured by emotion (PCA), {ctx.model.name}")
    plot_sublayer_cosines(np.stack(list(geo["sublayer_cosine"].values())), out / "cosine_sublayers.png")
    plot_cross_emotion(geo["cross_emotion_cosine"]["mlp"], layers, out / "cosine_emotions_mlp.png", "mlp")
    plot_separability({"attention, raw": separability["attn"], "MLP, raw": separability["mlp"],
                       "attention, group-centred": separability["attn_group_centred"],
                       "MLP, group-centred": separability["mlp_group_centred"]},
                      out / "separability.png", 1 / len(EMOTIONS),
                      f"Emotion separability by layer ({ctx.model.name}, rule: {table['rule']})")
    summary = {"stage": STAGE, "rule": table["rule"], "fallback": table["fallback"], "complete_groups": n_complete,
               "items": table["n_items"], "separability_max": {k: float(v.max()) for k, v in separability.items()},
               **{k: geo["summary"][k] for k in ("sublayer_offdiag_mean", "attn_vs_mlp_same_layer_mean",
                                                  "mlp_vs_next_attn_mean")}}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary


def load(ctx: StageContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(directions.npz arrays, its metadata) of the finished stage, checked against the current model."""
    path = ctx.run.path / STAGE / "directions.npz"
    if not ctx.run.is_done(STAGE):
        raise InputError(f"{path.parent}: the directions stage has not finished; run "
                         "`python -m experiments.directions` on this run directory")
    cfg = ctx.config
    l, d = cfg.n_layers, cfg.d_model
    arrays = check_array_file(path, {"dirs_attn": (6, l, d), "dirs_mlp": (6, l, d), "delta_mlp": (6, l, cfg.d_ff),
                                     "delta_attn": (6, l, cfg.q_dim), "sigma_attn": (l,), "sigma_mlp": (l,),
                                     "v_ref": (6, d)}, model_hash(ctx))
    return arrays, read_npz(path)[1]
