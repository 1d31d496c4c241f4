"""MLP-neuron scans: the analytic contributions of S4a and exact causal scans.

Analytic (method.md S4a; no extra runs). With beta^l = W_down^(l)^T v^{mlp,l}, neuron j of layer l
contributes c = a_{l,j}[t*] * beta^l_j to <o^mlp_l[t*], v^{mlp,l}>, and the contributions sum to it:

    beta = neuron_write_alignment(params, directions)         directions [.., L, D] -> [.., L, F]
    c    = neuron_contributions(params, g, directions)        g [N, L, F]; directions [L, D] | [N, L, D]
    stats = neuron_stats(params, g, labels, directions)       per-emotion C_mean, C_pos, C_neg, beta,
                                                              H_mean [E, L, F] and count [E]

Causal (method.md §14.2). Ablating neuron (l, j) at t* moves x_{l+1}[t*] by
(a_ref - a_{l,j}) W_down^(l)[j], so each neuron is one one-token suffix pass from layer l+1:

    causal_neuron_scan(params, prefix, readout, config=cfg, replacement=None) -> ScanResult
        effect [len(layers), len(neurons), B(, R)] on <h_final[t*], readout>
    neuron_edit_scores(params, prefix, layer, scale=[S, F], add=[S, F] | [S, B, F], ...)
        scores [S, B(, R)] for arbitrary neuron sets of one layer: a_j <- scale_j a_j + add_j,
        at t* ("last", suffix pass) or at every real position ("all", recompute-from-layer)

`replacement` selects zero / mean / group-mean / resample ablation (emojax.scan.ablation).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig
from emojax.scan import ablation, chunking
from emojax.scan.layers import layer_params, mlp, project_readout
from emojax.scan.prefix import Prefix
from emojax.scan.recompute import clean_site_state, recompute_final, require_sequence
from emojax.scan.suffix import ScanResult, clean_scores, suffix_final

Array = Any
STAT_NAMES = ("C_mean", "C_pos", "C_neg", "beta", "H_mean")


def neuron_write_alignment(params: dict[str, Any], directions: Array) -> np.ndarray:
    """beta = W_down^T v per layer: directions [..., L, D] -> [..., L, F]."""
    return np.asarray(jnp.einsum("lfd,...ld->...lf", params["layers"]["w_down"],
                                 jnp.asarray(directions, jnp.float32)))


def neuron_contributions(params: dict[str, Any], g: Array, directions: Array) -> np.ndarray:
    """c [N, L, F] = g * beta, directions [L, D] (shared) or [N, L, D] (each row's emotion)."""
    return np.asarray(g, np.float32) * neuron_write_alignment(params, directions)


@jax.jit
def _stats_chunk(g: Array, labels: Array, beta: Array) -> tuple[Array, ...]:
    c = g * beta[labels]  # [n, L, F]
    n_groups = beta.shape[0]
    sums = [jax.ops.segment_sum(x, labels, num_segments=n_groups)
            for x in (c, jnp.maximum(c, 0.0), jnp.maximum(-c, 0.0), g)]
    return tuple(sums) + (jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=n_groups),)


def neuron_stats(params: dict[str, Any], g: Array, labels: Array, directions: Array, *,
                 chunk: int = 128) -> dict[str, np.ndarray]:
    """Per-emotion neuron aggregates of S4a.

    g [N, L, F] activations at t*; labels [N] emotion index in [0, E); directions [E, L, D] the MLP
    directions v^{mlp,l}_e. Returns C_mean, C_pos, C_neg, H_mean (means over each emotion's items;
    NaN for an emotion without items), beta [E, L, F] and count [E].
    """
    g = np.asarray(g, np.float32)
    labels = np.asarray(labels, np.int32)
    beta = jnp.asarray(neuron_write_alignment(params, directions))
    if labels.shape != (g.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= beta.shape[0]:
        raise ValueError(f"neuron_stats: labels must be [N={g.shape[0]}] ints in [0, {beta.shape[0]})")
    totals = None
    for start, stop in chunking.chunk_bounds(len(labels), chunk):
        part = _stats_chunk(jnp.asarray(g[start:stop]), jnp.asarray(labels[start:stop]), beta)
        totals = part if totals is None else tuple(a + b for a, b in zip(totals, part))
    count = np.asarray(totals[-1])
    denom = np.where(count > 0, count, np.nan)[:, None, None]
    out = {name: np.asarray(total) / denom for name, total in zip(("C_mean", "C_pos", "C_neg", "H_mean"), totals)}
    out.update(beta=np.asarray(beta), count=count)
    return out


@functools.partial(jax.jit, static_argnames=("config",))
def _ablation_chunk(params: dict[str, Any], prefix: Prefix, layer: Array, neurons: Array, ref: Array,
                    readout: Array, *, config: ModelConfig) -> Array:
    shift = jnp.take(ref - prefix.g[:, layer], neurons, axis=1).T  # [C, B]: a_ref - a
    write = jnp.take(params["layers"]["w_down"][layer], neurons, axis=0)  # [C, D]
    deltas = shift[:, :, None] * write[:, None, :]
    return project_readout(suffix_final(params, prefix, layer, 1, deltas, config), readout)


def causal_neuron_scan(params: dict[str, Any], prefix: Prefix, readout: Array, *, config: ModelConfig,
                       replacement: Array | None = None, layers: Sequence[int] | None = None,
                       neurons: Sequence[int] | None = None, chunk: int | None = None) -> ScanResult:
    """Exhaustive causal scan: the effect on <h_final[t*], readout> of setting a_{l,j}[t*] to its
    replacement (0 by default), one neuron at a time, for every scanned layer and neuron."""
    layers = list(range(config.n_layers)) if layers is None else list(layers)
    neurons = np.arange(config.d_ff, dtype=np.int32) if neurons is None else np.asarray(neurons, np.int32)
    b = prefix.batch
    readout = jnp.asarray(chunking.as_readout(readout, b, config.d_model))
    base = clean_scores(prefix, readout)
    chunk = chunk or chunking.default_chunk(b)
    draws = ablation.replacement_draws(replacement, "causal_neuron_scan")
    total = np.zeros((len(layers), len(neurons)) + base.shape, np.float32)
    units = [(rep, i, layer) for rep in draws for i, layer in enumerate(layers)]
    for rep, i, layer in chunking.progress(units, len(units), "neuron scan layers"):
        ref = jnp.asarray(ablation.replacement_at_layer(rep, layer, b, config.d_ff))
        total[i] += chunking.map_chunks(
            lambda idx: _ablation_chunk(params, prefix, layer, neurons[idx], ref, readout, config=config),
            len(neurons), chunk, desc=f"neurons L{layer}")
    return ScanResult(effect=total / len(draws) - base, base=base)


@functools.partial(jax.jit, static_argnames=("config", "positions"))
def _edit_chunk(params: dict[str, Any], prefix: Prefix, layer: Array, scale: Array, add: Array,
                readout: Array, *, config: ModelConfig, positions: str) -> Array:
    w_down = params["layers"]["w_down"][layer]
    if positions == "last":
        change = (scale[:, None] - 1.0) * prefix.g[None, :, layer] + add  # [S, B, F]
        final = suffix_final(params, prefix, layer, 1, change @ w_down, config)
    else:
        mid, _ = clean_site_state(params, prefix, layer, 0, config)
        g = mlp(mid, layer_params(params["layers"], layer), config)[1]  # [B, T, F]
        change = (scale[:, None, None] - 1.0) * g[None] + add[:, :, None]
        deltas = (change @ w_down) * prefix.mask[None, :, :, None]
        final = recompute_final(params, prefix, layer, 1, prefix.resid_all[:, layer + 1], deltas, config)
    return project_readout(final, readout)


def neuron_edit_scores(params: dict[str, Any], prefix: Prefix, layer: int, *, scale: Array,
                       add: Array | None = None, readout: Array, config: ModelConfig, positions: str = "last",
                       chunk: int | None = None) -> np.ndarray:
    """Scores [S, B(, R)] after a_j <- scale[s, j] a_j + add[s, (b,) j] for the neurons of `layer`."""
    if positions not in ("last", "all"):
        raise ValueError(f"neuron_edit_scores: positions={positions!r}; expected 'last' or 'all'")
    if positions == "all":
        require_sequence(prefix, "neuron_edit_scores")
    b = prefix.batch
    scale = np.asarray(scale, np.float32)
    add = np.zeros_like(scale) if add is None else np.asarray(add, np.float32)
    add = np.ascontiguousarray(np.broadcast_to(add[:, None] if add.ndim == 2 else add,
                                               (scale.shape[0], b, config.d_ff)))
    readout = jnp.asarray(chunking.as_readout(readout, b, config.d_model))
    tokens = b * (prefix.mask.shape[1] if positions == "all" else 1)
    n = scale.shape[0]
    return chunking.map_chunks(
        lambda idx: _edit_chunk(params, prefix, layer, scale[idx], add[idx], readout, config=config,
                                positions=positions),
        n, chunk or chunking.default_chunk(tokens), desc=f"neurons L{layer} ({positions})")
