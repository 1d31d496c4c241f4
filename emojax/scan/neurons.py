"""MLP-neuron scans: the analytic contributions of S4a and exact causal scans.

Analytic (method.md S4a; no extra runs). With beta^l = W_down^(l)^T v^{mlp,l}, neuron j of layer l
contributes c = a_{l,j}[t*] * beta^l_j to <o^mlp_l[t*], v^{mlp,l}>, and the contributions sum to it:

    beta = neuron_write_alignment(params, directions)         directions [.., L, D] -> [.., L, F]
    c    = neuron_contributions(params, g, directions)        g [N, L, F]; directions [L, D] | [N, L, D]
    stats = neuron_stats(params, g, labels, directions)       per-emotion C_mean, C_pos, C_neg, beta,
                                                              H_mean [E, L, F] and count [E]
    change = neuron_set_local_changes(params, g_l, l, v_l, scale=..., add=..., config=cfg)
                                                              exact local effect of neuron-set edits

c is defined for every family as the drop of <o^mlp_l[t*], v> when a_{l,j}[t*] alone is zeroed, o^mlp
being what the MLP adds to the residual. Without post-sublayer norms that is a_{l,j} beta_j (and the
contributions of a layer add up to the projection). With them (Gemma 2/3, o^mlp = N_post(a W_down))
it is computed in closed form through the norm, exactly, and `config=` is required; the
contributions then do not add up, and set effects come from `neuron_set_local_changes`.

Causal (method.md §14.2). Ablating neuron (l, j) at t* moves x_{l+1}[t*] by
(a_ref - a_{l,j}) W_down^(l)[j] (through the post-sublayer norm where there is one, exactly), so each
neuron is one one-token suffix pass from layer l+1:

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

from emojax.model import block
from emojax.model.config import ModelConfig
from emojax.scan import ablation, chunking
from emojax.scan.layers import layer_params, mlp, project_readout
from emojax.scan.prefix import Prefix
from emojax.scan.recompute import clean_site_state, recompute_final, require_sequence
from emojax.scan.suffix import ScanResult, clean_scores, suffix_final

Array = Any
STAT_NAMES = ("C_mean", "C_pos", "C_neg", "beta", "H_mean")


def neuron_write_alignment(params: dict[str, Any], directions: Array) -> np.ndarray:
    """beta = W_down^T v per layer: directions [..., L, D] -> [..., L, F] (the write-out alignment of
    the pre-norm branch output g W_down)."""
    return np.asarray(jnp.einsum("lfd,...ld->...lf", params["layers"]["w_down"],
                                 jnp.asarray(directions, jnp.float32)))


def _post_norm_config(params: dict[str, Any], config: ModelConfig | None, caller: str) -> ModelConfig | None:
    """The config when the MLP branch is post-normed (its contributions then need it), else None."""
    if "mlp_post_norm" not in params["layers"]:
        return None
    if config is None:
        raise ValueError(f"{caller}: this model normalises the MLP output before the residual add (post-"
                         "sublayer norms), so neuron contributions pass through that norm; pass config=")
    return config


_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("config",))
def _post_norm_contributions(params: dict[str, Any], g: Array, directions: Array, *,
                             config: ModelConfig) -> Array:
    """c [N, L, F] = <o^mlp, v> - <o^mlp with a_j <- 0, v>, with o^mlp = N_post(y), y = g W_down, in
    closed form: <N_post(y'), v> = <y', u> / rms(y') with u = gain * v, and for y' = y - a_j w_j both
    <y', u> and |y'|^2 follow from <y, u>, <w_j, u>, <w_j, y>, |w_j|^2 and |y|^2."""
    layers = params["layers"]
    w = layers["w_down"].astype(jnp.float32)  # [L, F, D]
    d = w.shape[-1]
    u = (config.norm_offset + layers["mlp_post_norm"].astype(jnp.float32)) * directions  # [(N,) L, D]
    y = jnp.einsum("nlf,lfd->nld", g, w, precision=_HIGHEST)
    yu = jnp.sum(y * u, axis=-1)
    yy = jnp.sum(y * y, axis=-1)
    wu = jnp.einsum("lfd,...ld->...lf", w, u, precision=_HIGHEST)
    wy = jnp.einsum("lfd,nld->nlf", w, y, precision=_HIGHEST)
    ww = jnp.sum(w * w, axis=-1)
    eps = config.rms_eps
    base = yu * jax.lax.rsqrt(yy / d + eps)
    ablated_yy = jnp.maximum(yy[..., None] - 2.0 * g * wy + g * g * ww, 0.0)
    ablated = (yu[..., None] - g * wu) * jax.lax.rsqrt(ablated_yy / d + eps)
    return base[..., None] - ablated


def neuron_contributions(params: dict[str, Any], g: Array, directions: Array, *,
                         config: ModelConfig | None = None, chunk: int = 256) -> np.ndarray:
    """c [N, L, F]: how much <o^mlp_l[t*], v> drops when neuron (l, j) alone is zeroed at t*; directions
    [L, D] (shared) or [N, L, D] (each row's emotion).

    Without post-sublayer norms this is g * beta and a layer's contributions sum to <o^mlp_l, v>. With
    them (Gemma 2/3: o^mlp = N_post(g W_down)) it is computed exactly through the norm (`config` is
    then required); the contributions no longer sum to the projection, and the effect of a neuron set
    is not the sum of its members' (`neuron_set_local_changes` gives it)."""
    config = _post_norm_config(params, config, "neuron_contributions")
    if config is None:
        return np.asarray(g, np.float32) * neuron_write_alignment(params, directions)
    g = np.asarray(g, np.float32)
    directions = np.asarray(directions, np.float32)
    per_row = directions.ndim == 3
    return chunking.map_chunks(
        lambda idx: _post_norm_contributions(params, jnp.asarray(g[idx]),
                                             jnp.asarray(directions[idx] if per_row else directions),
                                             config=config),
        g.shape[0], chunk, desc="neuron contributions")


@functools.partial(jax.jit, static_argnames=("config",))
def _set_changes_chunk(params: dict[str, Any], layer: Array, g: Array, direction: Array, scale: Array,
                       add: Array, *, config: ModelConfig) -> Array:
    w = params["layers"]["w_down"][layer]
    y = g @ w  # [n, D]
    change = ((scale[:, None] - 1.0) * g[None] + add) @ w  # [S, n, D]
    if config.post_norms:
        change = block.residual_change(y[None], change, params["layers"]["mlp_post_norm"][layer], config)
    return jnp.einsum("snd,d->sn", change, direction)


def neuron_set_local_changes(params: dict[str, Any], g: Array, layer: int, direction: Array, *,
                             scale: Array, add: Array | None = None, config: ModelConfig,
                             chunk: int = 64) -> np.ndarray:
    """The exact change [S, n] of <o^mlp_l[t*], v> (equally of <x_{l+1}[t*], v>) when the neurons of
    `layer` are edited at t*, a_j <- scale[s, j] a_j + add[s, (i,) j]: g [n, F] that layer's activations
    at t*, direction v [D], scale [S, F], add [S, F] or [S, n, F]. Through the post-sublayer norm where
    the family has one; linear in the edit otherwise."""
    g = jnp.asarray(g, jnp.float32)
    scale = np.asarray(scale, np.float32)
    add = np.zeros_like(scale) if add is None else np.asarray(add, np.float32)
    add = np.ascontiguousarray(np.broadcast_to(add[:, None] if add.ndim == 2 else add,
                                               (scale.shape[0],) + g.shape))
    direction = jnp.asarray(direction, jnp.float32)
    return chunking.map_chunks(
        lambda idx: _set_changes_chunk(params, layer, g, direction, jnp.asarray(scale[idx]), jnp.asarray(add[idx]),
                                       config=config),
        scale.shape[0], chunk, desc=f"neuron sets L{layer}")


@jax.jit
def _stats_chunk(g: Array, labels: Array, beta: Array) -> tuple[Array, ...]:
    return _stat_sums(g, g * beta[labels], labels, beta.shape[0])


@functools.partial(jax.jit, static_argnames=("n_groups",))
def _stat_sums(g: Array, c: Array, labels: Array, n_groups: int) -> tuple[Array, ...]:
    sums = [jax.ops.segment_sum(x, labels, num_segments=n_groups)
            for x in (c, jnp.maximum(c, 0.0), jnp.maximum(-c, 0.0), g)]
    return tuple(sums) + (jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=n_groups),)


def neuron_stats(params: dict[str, Any], g: Array, labels: Array, directions: Array, *,
                 chunk: int = 128, config: ModelConfig | None = None) -> dict[str, np.ndarray]:
    """Per-emotion neuron aggregates of S4a.

    g [N, L, F] activations at t*; labels [N] emotion index in [0, E); directions [E, L, D] the MLP
    directions v^{mlp,l}_e. Returns C_mean, C_pos, C_neg, H_mean (means over each emotion's items;
    NaN for an emotion without items), beta [E, L, F] and count [E]. The contributions c are those of
    `neuron_contributions` (through the post-sublayer norm where there is one; `config` then needed).
    """
    g = np.asarray(g, np.float32)
    labels = np.asarray(labels, np.int32)
    post_config = _post_norm_config(params, config, "neuron_stats")
    beta = jnp.asarray(neuron_write_alignment(params, directions))
    if labels.shape != (g.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= beta.shape[0]:
        raise ValueError(f"neuron_stats: labels must be [N={g.shape[0]}] ints in [0, {beta.shape[0]})")
    directions = jnp.asarray(directions, jnp.float32)
    totals = None
    for start, stop in chunking.chunk_bounds(len(labels), chunk):
        g_part, labels_part = jnp.asarray(g[start:stop]), jnp.asarray(labels[start:stop])
        if post_config is None:
            part = _stats_chunk(g_part, labels_part, beta)
        else:
            c = _post_norm_contributions(params, g_part, directions[labels_part], config=post_config)
            part = _stat_sums(g_part, c, labels_part, beta.shape[0])
        totals = part if totals is None else tuple(a + b for a, b in zip(totals, part))
    count = np.asarray(totals[-1])
    denom = np.where(count > 0, count, np.nan)[:, None, None]
    out = {name: np.asarray(total) / denom for name, total in zip(("C_mean", "C_pos", "C_neg", "H_mean"), totals)}
    out.update(beta=np.asarray(beta), count=count)
    return out


def _mlp_deltas(params: dict[str, Any], layer: Array, g: Array, change: Array, config: ModelConfig) -> Array:
    """Residual deltas [S, B, (T,) D] of the change [S, B, (T,) D] of g W_down at layer `layer` (clean g
    [B, (T,) F]): the change itself, or through the post-sublayer norm (exact)."""
    if not config.post_norms:
        return change
    y = g @ params["layers"]["w_down"][layer]
    return block.residual_change(y[None], change, params["layers"]["mlp_post_norm"][layer], config)


@functools.partial(jax.jit, static_argnames=("config",))
def _ablation_chunk(params: dict[str, Any], prefix: Prefix, layer: Array, neurons: Array, ref: Array,
                    readout: Array, *, config: ModelConfig) -> Array:
    shift = jnp.take(ref - prefix.g[:, layer], neurons, axis=1).T  # [C, B]: a_ref - a
    write = jnp.take(params["layers"]["w_down"][layer], neurons, axis=0)  # [C, D]
    deltas = _mlp_deltas(params, layer, prefix.g[:, layer], shift[:, :, None] * write[:, None, :], config)
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
        deltas = _mlp_deltas(params, layer, prefix.g[:, layer], change @ w_down, config)
        final = suffix_final(params, prefix, layer, 1, deltas, config)
    else:
        mid, _ = clean_site_state(params, prefix, layer, 0, config)
        g = mlp(mid, layer_params(params["layers"], layer), config)[1]  # [B, T, F]
        change = (scale[:, None, None] - 1.0) * g[None] + add[:, :, None]
        deltas = _mlp_deltas(params, layer, g, change @ w_down, config) * prefix.mask[None, :, :, None]
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
