"""Brute-force scans: one full `emojax.forward` per variant, with an Intervention.

These are the definitions the fast scans must reproduce (tests compare them) and the fallback for
edits no shortcut covers. Each variant is a whole prompt forward, vmapped over stacked
Interventions in chunks. Read-outs and shapes follow the fast scans:

    intervention_scores(params, tokens, mask, ivs, readout=..., config=cfg)   -> [V, B(, R)]
    brute_head_scan(..., positions="last"|"all")                              -> ScanResult [L, H, B(, R)]
    brute_neuron_scan(...)                                                    -> ScanResult [L, F, B(, R)]
    brute_sublayer_scan(...)                                                  -> [2, L, A, B(, R)] scores
    brute_head_same_layer(...)                                                -> (importance [B, L, H], base [B, L])
    brute_neuron_contributions(...)                                           -> c [B, L, F]

Replacement values (mean / group-mean ablation) use the capture layouts: heads [L, H*Dh] or
[B, L, H*Dh], neurons [L, F] or [B, L, F]; None means zero-ablation.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig
from emojax.model import block
from emojax.model.forward import forward
from emojax.model.interventions import Intervention, stack_variants
from emojax.model.taps import TapSpec
from emojax.scan import chunking
from emojax.scan.layers import project_readout
from emojax.scan.suffix import ScanResult

Array = Any


@functools.partial(jax.jit, static_argnames=("config",))
def _final_chunk(params: dict[str, Any], tokens: Array, mask: Array, ivs: Intervention | None,
                 readout: Array, *, config: ModelConfig) -> Array:
    def one(iv: Intervention | None) -> Array:
        out = forward(params, tokens, config=config, mask=mask, iv=iv, logits="none",
                      taps=TapSpec(points=("final",), at="last"))
        return project_readout(out.taps["final"], readout)

    if ivs is None:
        return one(None)[None]
    return jax.vmap(one)(ivs)


def intervention_scores(params: dict[str, Any], tokens: Array, mask: Array, ivs: Intervention | None, *,
                        readout: Array, config: ModelConfig, chunk: int = 16) -> np.ndarray:
    """<h_final[t*], readout> for each of the stacked Interventions ivs (leading axis V); None = clean."""
    tokens, mask = jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool)
    readout = jnp.asarray(chunking.as_readout(readout, tokens.shape[0], config.d_model))
    if ivs is None:
        return np.asarray(_final_chunk(params, tokens, mask, None, readout, config=config))[0]
    n = jax.tree_util.tree_leaves(ivs)[0].shape[0]
    return chunking.map_chunks(
        lambda idx: _final_chunk(params, tokens, mask, jax.tree_util.tree_map(lambda a: a[idx], ivs),
                                 readout, config=config),
        n, chunk, desc="brute-force forwards")


def _replacement_slice(replacement: Array | None, layer: int, cols: slice, batch: int) -> np.ndarray | None:
    """The replacement value of one component at one layer: [width] shared or [B, width] per row."""
    if replacement is None:
        return None
    rep = np.asarray(replacement, np.float32)
    return rep[layer, cols] if rep.ndim == 2 else rep[:, layer, cols]


def _with_add(field: np.ndarray, layer: int, index: int, value: np.ndarray | None, batch: int) -> np.ndarray:
    """Set field[layer, (B,) index] = value, switching the field to per-row layout for per-row values."""
    if value is None:
        return field
    if value.ndim == field.ndim - 1:  # per-row value [B, ...]: layout [L, B, ...]
        field = np.broadcast_to(field[:, None], (field.shape[0], batch) + field.shape[1:]).copy()
        field[layer, :, index] = value
    else:
        field[layer, index] = value
    return field


def head_ablation_interventions(config: ModelConfig, sites: Sequence[tuple[int, int]], batch: int,
                                positions: str = "last", replacement: Array | None = None) -> Intervention:
    """Stacked Interventions, one per (layer, head): z_{l,h} <- replacement (0 by default) at t* or
    at every position."""
    where = {"last": "last", "all": "all"}[positions]
    dh = config.head_dim
    ivs = []
    for layer, head in sites:
        iv = Intervention.identity(config, resid_where="none", neuron_where="none", head_where=where)
        add = _with_add(np.zeros((config.n_layers, config.n_heads, dh), np.float32), layer, head,
                        _replacement_slice(replacement, layer, slice(head * dh, (head + 1) * dh), batch), batch)
        ivs.append(iv.zero_heads([(layer, head)]).replace(head_add=jnp.asarray(add)))
    return stack_variants(ivs)


def neuron_ablation_interventions(config: ModelConfig, sites: Sequence[tuple[int, int]], batch: int,
                                  replacement: Array | None = None) -> Intervention:
    """Stacked Interventions, one per (layer, neuron): a_{l,j}[t*] <- replacement (0 by default)."""
    ivs = []
    for layer, neuron in sites:
        iv = Intervention.identity(config, resid_where="none", neuron_where="last", head_where="none")
        rep = _replacement_slice(replacement, layer, slice(neuron, neuron + 1), batch)
        add = _with_add(np.zeros((config.n_layers, config.d_ff), np.float32), layer, neuron,
                        None if rep is None else rep[..., 0], batch)
        ivs.append(iv.zero_neurons([(layer, neuron)]).replace(neuron_add=jnp.asarray(add)))
    return stack_variants(ivs)


def _effects(params: dict[str, Any], tokens: Array, mask: Array, ivs: Intervention, shape: tuple[int, ...],
             readout: Array, config: ModelConfig, chunk: int) -> ScanResult:
    base = intervention_scores(params, tokens, mask, None, readout=readout, config=config)
    scores = intervention_scores(params, tokens, mask, ivs, readout=readout, config=config, chunk=chunk)
    return ScanResult(effect=(scores - base).reshape(shape + base.shape), base=base)


def brute_head_scan(params: dict[str, Any], tokens: Array, mask: Array, *, readout: Array,
                    config: ModelConfig, positions: str = "last", replacement: Array | None = None,
                    layers: Sequence[int] | None = None, chunk: int = 16) -> ScanResult:
    """Effect of ablating each head (at t* or at every position) on <h_final[t*], readout>."""
    layers = list(range(config.n_layers)) if layers is None else list(layers)
    sites = [(l, h) for l in layers for h in range(config.n_heads)]
    ivs = head_ablation_interventions(config, sites, np.shape(tokens)[0], positions, replacement)
    return _effects(params, tokens, mask, ivs, (len(layers), config.n_heads), readout, config, chunk)


def brute_neuron_scan(params: dict[str, Any], tokens: Array, mask: Array, *, readout: Array,
                      config: ModelConfig, replacement: Array | None = None,
                      layers: Sequence[int] | None = None, neurons: Sequence[int] | None = None,
                      chunk: int = 16) -> ScanResult:
    """Effect of ablating each neuron at t* on <h_final[t*], readout>: [len(layers), len(neurons), B(, R)]."""
    layers = list(range(config.n_layers)) if layers is None else list(layers)
    neurons = list(range(config.d_ff)) if neurons is None else list(neurons)
    sites = [(l, j) for l in layers for j in neurons]
    ivs = neuron_ablation_interventions(config, sites, np.shape(tokens)[0], replacement)
    return _effects(params, tokens, mask, ivs, (len(layers), len(neurons)), readout, config, chunk)


def brute_sublayer_scan(params: dict[str, Any], tokens: Array, mask: Array, *, directions: Array,
                        sigma: Array, alphas: Sequence[float], readout: Array, config: ModelConfig,
                        chunk: int = 16) -> np.ndarray:
    """Scores [2, L, A, B(, R)] with alpha*sigma[k,l]*directions[k,l] added to branch output (k, l) at t*.

    directions: [2, L, D] shared or [B, 2, L, D] per row; sigma [2, L].
    """
    directions = np.asarray(directions, np.float32)
    sigma = np.asarray(sigma, np.float32)
    resid_only = Intervention.identity(config, resid_where="last", neuron_where="none", head_where="none")
    ivs = []
    for kind in range(2):
        for layer in range(config.n_layers):
            for alpha in alphas:
                add = np.zeros((config.n_layers, 2, config.d_model), np.float32)
                vec = alpha * sigma[kind, layer] * directions[..., kind, layer, :]
                add = _with_add(add, layer, kind, vec, np.shape(tokens)[0])
                ivs.append(resid_only.replace(resid_add=jnp.asarray(add)))
    scores = intervention_scores(params, tokens, mask, stack_variants(ivs), readout=readout, config=config,
                                 chunk=chunk)
    return scores.reshape((2, config.n_layers, len(alphas)) + scores.shape[1:])


@functools.partial(jax.jit, static_argnames=("config",))
def _mlp_input_chunk(params: dict[str, Any], tokens: Array, mask: Array, ivs: Intervention,
                     directions: Array, *, config: ModelConfig) -> Array:
    def one(iv: Intervention) -> Array:
        mid = forward(params, tokens, config=config, mask=mask, iv=iv, logits="none",
                      taps=TapSpec(points=("resid_mid",), at="last")).taps["resid_mid"]
        u = block.norm(mid, params["layers"]["mlp_norm"], config)
        return jnp.einsum("bld,bld->bl", u, jnp.broadcast_to(directions, u.shape))

    return jax.vmap(one)(ivs)


def brute_head_same_layer(params: dict[str, Any], tokens: Array, mask: Array, *, directions: Array,
                          config: ModelConfig, layers: Sequence[int] | None = None,
                          chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The S4b head importance by definition: zero head (l, h) at every position, run the model and
    read s_l = <N^post_l(m_l)[t*], directions[l]> (N^post_l: the MLP's input norm). directions [L, D]
    or [B, L, D].
    Returns (importance s_l - s'_l [B, len(layers), H], baseline s_l [B, L])."""
    tokens, mask = jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool)
    directions = jnp.asarray(directions, jnp.float32)
    layers = list(range(config.n_layers)) if layers is None else list(layers)
    sites = [(l, h) for l in layers for h in range(config.n_heads)]
    heads_only = Intervention.identity(config, resid_where="none", neuron_where="none")
    ivs = stack_variants([heads_only] + [heads_only.zero_heads([s]) for s in sites])
    scores = chunking.map_chunks(
        lambda idx: _mlp_input_chunk(params, tokens, mask, jax.tree_util.tree_map(lambda a: a[idx], ivs),
                                     directions, config=config),
        len(sites) + 1, chunk, desc="brute-force head ablations")
    base, ablated = scores[0], scores[1:]  # [B, L], [len(sites), B, L]
    ablated = ablated.reshape(len(layers), config.n_heads, *base.shape)
    own_layer = ablated[np.arange(len(layers)), :, :, np.asarray(layers)]  # [len(layers), H, B]
    return base[:, layers, None] - np.transpose(own_layer, (2, 0, 1)), base


@functools.partial(jax.jit, static_argnames=("config",))
def _mlp_out_chunk(params: dict[str, Any], tokens: Array, mask: Array, ivs: Intervention,
                   directions: Array, *, config: ModelConfig) -> Array:
    def one(iv: Intervention) -> Array:
        out = forward(params, tokens, config=config, mask=mask, iv=iv, logits="none",
                      taps=TapSpec(points=("mlp_out",), at="last")).taps["mlp_out"]
        return jnp.einsum("bld,bld->bl", out, jnp.broadcast_to(directions, out.shape))

    return jax.vmap(one)(ivs)


def brute_neuron_contributions(params: dict[str, Any], tokens: Array, mask: Array, *, directions: Array,
                               config: ModelConfig, layers: Sequence[int] | None = None,
                               neurons: Sequence[int] | None = None, chunk: int = 16) -> np.ndarray:
    """The S4a contributions by definition: zero a_{l,j}[t*], run the model and read how much
    <o^mlp_l[t*], directions[l]> drops (o^mlp: what the MLP adds to the residual, after its post norm
    where there is one). directions [L, D] or [B, L, D]. Returns [B, len(layers), len(neurons)]."""
    tokens, mask = jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool)
    directions = jnp.asarray(directions, jnp.float32)
    layers = list(range(config.n_layers)) if layers is None else list(layers)
    neurons = list(range(config.d_ff)) if neurons is None else list(neurons)
    sites = [(l, j) for l in layers for j in neurons]
    neurons_only = Intervention.identity(config, resid_where="none", neuron_where="last", head_where="none")
    ivs = stack_variants([neurons_only] + [neurons_only.zero_neurons([s]) for s in sites])
    scores = chunking.map_chunks(
        lambda idx: _mlp_out_chunk(params, tokens, mask, jax.tree_util.tree_map(lambda a: a[idx], ivs),
                                   directions, config=config),
        len(sites) + 1, chunk, desc="brute-force neuron ablations")
    base, ablated = scores[0], scores[1:].reshape(len(layers), len(neurons), *scores.shape[1:])
    own_layer = ablated[np.arange(len(layers)), :, :, np.asarray(layers)]  # [len(layers), F', B]
    return base[:, layers, None] - np.transpose(own_layer, (2, 0, 1))
