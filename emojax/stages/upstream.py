"""Checked reads of the artefacts earlier stages wrote into the run directory.

Every array file is matched against the run's model hash and the model's shapes on the way in
(`emojax.runs.check_array_file`), so a stale or foreign artefact fails with one line naming it.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from emojax.circuit import Circuit
from emojax.data import EMOTIONS
from emojax.runs import InputError, check_array_file, check_circuit, read_json
from emojax.runs.stage_record import model_hash
from emojax.stages import capture, directions_stage
from emojax.stages.context import StageContext

N_EMOTIONS = len(EMOTIONS)


class CapturedItems(NamedTuple):
    keys: list[str]
    emotion: np.ndarray    # [N] index into EMOTIONS
    rule: str


def _file(ctx: StageContext, stage: str, name: str):
    path = ctx.run.path / stage / name
    if not ctx.run.is_done(stage) and not path.exists():
        raise InputError(f"{path}: stage {stage!r} has not run yet in {ctx.run.path}")
    return path


def directions(ctx: StageContext) -> dict[str, np.ndarray]:
    """directions.npz of the directions stage (dirs, delta, sigma, v_ref), checked against the model."""
    return directions_stage.load(ctx)[0]


def spread_rows(emotion: np.ndarray, per_emotion: int) -> dict[int, np.ndarray]:
    """Per emotion index, up to `per_emotion` of its rows in `emotion`, evenly spaced over them (so a
    sample spans the scenarios); an emotion without rows gets an empty array."""
    emotion = np.asarray(emotion)
    chosen = {}
    for e in range(N_EMOTIONS):
        rows = np.flatnonzero(emotion == e)
        picks = np.linspace(0, rows.size - 1, min(per_emotion, rows.size)).round().astype(int)
        chosen[e] = rows[np.unique(picks)]
    return chosen


def captured_items(ctx: StageContext) -> CapturedItems:
    """The items of the fused capture (those the directions rule selected), from capture/items.json."""
    path = _file(ctx, capture.STAGE, "items.json")
    data = read_json(path)
    try:
        keys = [str(k) for k in data["keys"]]
        emotion = np.asarray(data["emotion"], np.int32)
        rule = str(data["rule"])
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: malformed capture index ({type(err).__name__}: {err})") from None
    if len(keys) != len(emotion) or (emotion.size and not 0 <= emotion.min() <= emotion.max() < N_EMOTIONS):
        raise InputError(f"{path}: {len(keys)} keys but {len(emotion)} emotion indices in 0..5")
    return CapturedItems(keys, emotion, rule)


def neuron_scores(ctx: StageContext) -> np.ndarray:
    """C_mean [6, L, F] of the analytic neuron decomposition (S4a)."""
    c = ctx.config
    arrays = check_array_file(_file(ctx, "components", "neuron_stats.npz"),
                              {"C_mean": (N_EMOTIONS, c.n_layers, c.d_ff)}, model_hash(ctx))
    return arrays["C_mean"]


def head_scores(ctx: StageContext) -> np.ndarray:
    """Mean same-layer head importance [6, L, H] (S4b)."""
    c = ctx.config
    arrays = check_array_file(_file(ctx, "components", "head_stats.npz"),
                              {"mean": (N_EMOTIONS, c.n_layers, c.n_heads)}, model_hash(ctx))
    return arrays["mean"]


def influence(ctx: StageContext) -> np.ndarray:
    """Mean-over-alpha sublayer influence [6, 2, L] (kind 0 attention, 1 MLP) of the sublayer stage."""
    arrays = check_array_file(_file(ctx, "sublayer", "influence.npz"),
                              {"mean_over_alpha": (N_EMOTIONS, 2, ctx.config.n_layers)}, model_hash(ctx))
    return arrays["mean_over_alpha"]


def causal_rankings(ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
    """(neuron [6, L, F], head [6, L, H]) exact causal scores of the causal stage (§14.2), larger =
    pushes towards the emotion; every layer and emotion must have been scanned."""
    c = ctx.config
    path = _file(ctx, "causal", "causal_scores.npz")
    arrays = check_array_file(path, {"neuron_causal": (N_EMOTIONS, c.n_layers, c.d_ff),
                                     "head_causal": (N_EMOTIONS, c.n_layers, c.n_heads)}, model_hash(ctx),
                              nan_means_not_computed=("neuron_causal", "head_causal"))
    neurons, heads = arrays["neuron_causal"], arrays["head_causal"]
    if np.isnan(neurons).any() or np.isnan(heads).any():
        raise InputError(f"{path}: the causal scan did not cover every layer and emotion, which the causal "
                         f"circuit ranking needs (scan all layers with at least one prompt per emotion)")
    return neurons, heads


def circuits(ctx: StageContext, subdir: str | None = None) -> dict[str, Circuit]:
    """The circuit of every emotion (`circuit/<emotion>.json`, or `circuit/<subdir>/<emotion>.json`),
    checked against the model's shapes and hash."""
    out = {}
    for emotion in EMOTIONS:
        path = _file(ctx, "circuit", f"{emotion}.json" if subdir is None else f"{subdir}/{emotion}.json")
        record = read_json(path)
        check_circuit(record, ctx.config, source=str(path), model_hash=model_hash(ctx))
        out[emotion] = Circuit.from_record(record, source=str(path))
    return out


def accuracy(ctx: StageContext, stage: str) -> dict[str, Any] | None:
    """A generation stage's accuracy.json, or None when that stage did not run."""
    path = ctx.run.path / stage / "accuracy.json"
    return read_json(path) if path.is_file() else None


def stage_summary(ctx: StageContext, stage: str) -> dict[str, Any] | None:
    """The summary a finished stage stored in its done.json, or None when it has not finished."""
    path = ctx.run.path / stage / "done.json"
    return read_json(path).get("summary") if path.is_file() else None


def modulation_scales(ctx: StageContext) -> np.ndarray:
    """lambda_e [6] that circuit modulation of the test split used (its done.json)."""
    summary = stage_summary(ctx, "modulate_test")
    if summary is None:
        raise InputError(f"{ctx.run.path / 'modulate_test'}: circuit modulation has not run yet; the circuit "
                         f"controls use its lambda")
    return np.asarray([summary["scales"][e] for e in EMOTIONS], np.float32)
