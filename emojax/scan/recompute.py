"""Recompute-from-layer: exact runs for edits at every position with a read-out at t*.

An edit at all positions of layer l changes the keys/values of every later layer, so the one-token
shortcut does not apply (method.md T5). Everything below the edited sublayer is still unchanged:
start from the captured clean residual stream at that site (all positions), add the per-position
delta, and recompute the remaining sublayers for whole sequences, vmapped over variants.

    prefix = capture_prefix(params, tokens, mask, config=cfg, keep_sequence=True)
    scores = recompute_scores(params, prefix, deltas, layer=l, sublayer="attn", readout=v, config=cfg)

deltas: [V, B, T, D] per position, or [V, D] / [V, B, D] added at every real (non-padding) position.
Sites and read-outs are as in `emojax.scan.suffix`. Head and neuron edits at every position are
turned into deltas by `emojax.scan.heads` / `emojax.scan.neurons`.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig
from emojax.scan import chunking
from emojax.scan.layers import (attention_full, final_norm, layer_attention, layer_params, mlp, project_readout,
                                sequence_geometry)
from emojax.scan.prefix import Prefix
from emojax.scan.suffix import SUBLAYERS, sublayer_index

Array = Any


def require_sequence(prefix: Prefix, caller: str) -> Array:
    if prefix.resid_all is None:
        raise ValueError(f"{caller}: edits at every position need the whole residual stream; "
                         "capture the prefix with capture_prefix(..., keep_sequence=True)")
    return prefix.resid_all


def clean_site_state(params: dict[str, Any], prefix: Prefix, layer: Array, sublayer: Array,
                     config: ModelConfig) -> tuple[Array, Array]:
    """The clean state right after sublayer (layer, sublayer) at every position [B, T, D], and layer
    l's head outputs z [B, T, H*Dh] (recomputed from x_l; needed to turn head edits into deltas)."""
    seq = prefix.resid_all
    cos, sin, allowed = layer_attention(sequence_geometry(prefix.mask, config), config, layer)
    x_l = seq[:, layer]
    o_attn, z = attention_full(x_l, layer_params(params["layers"], layer), cos, sin, allowed, config)
    state = jnp.where(sublayer == 0, x_l + o_attn, seq[:, layer + 1])
    return state, z


def recompute_final(params: dict[str, Any], prefix: Prefix, layer: Array, sublayer: Array, start: Array,
                    deltas: Array, config: ModelConfig) -> Array:
    """h_final[t*] [V, B, D] from the clean site state start [B, T, D] plus deltas [V, B, T, D].

    Pure and traceable; layer/sublayer may be traced scalars (one compilation for every site)."""
    geo = sequence_geometry(prefix.mask, config)
    x0 = start[None] + deltas
    skip_first_attention = sublayer == 0

    def body(i: Array, x: Array) -> Array:
        p = layer_params(params["layers"], i)
        cos, sin, allowed = layer_attention(geo, config, i)

        def with_attention(x: Array) -> Array:
            attend = lambda xv: attention_full(xv, p, cos, sin, allowed, config)[0]
            return x + jax.vmap(attend)(x)

        m = jax.lax.cond(skip_first_attention & (i == layer), lambda x: x, with_attention, x)
        return m + mlp(m, p, config)[0]

    x = jax.lax.fori_loop(layer + sublayer, config.n_layers, body, x0)
    return final_norm(x[:, :, -1], params, config)


def position_deltas(deltas: Array, mask: Array) -> Array:
    """[V, B, T, D] deltas from [V, B, T, D], or [V, D] / [V, B, D] applied at every real position."""
    mask = mask.astype(deltas.dtype)
    if deltas.ndim == 2:
        deltas = deltas[:, None]
    if deltas.ndim == 3:
        return deltas[:, :, None] * mask[None, :, :, None]
    return deltas * mask[None, :, :, None]


@functools.partial(jax.jit, static_argnames=("config",))
def _scores_chunk(params: dict[str, Any], prefix: Prefix, layer: Array, sublayer: Array, deltas: Array,
                  readout: Array, *, config: ModelConfig) -> Array:
    start, _ = clean_site_state(params, prefix, layer, sublayer, config)
    final = recompute_final(params, prefix, layer, sublayer, start, position_deltas(deltas, prefix.mask), config)
    return project_readout(final, readout)


def default_chunk(prefix: Prefix) -> int:
    return chunking.default_chunk(prefix.batch * prefix.mask.shape[1])


def recompute_scores(params: dict[str, Any], prefix: Prefix, deltas: Array, *, layer: int, sublayer: Any,
                     readout: Array, config: ModelConfig, chunk: int | None = None) -> np.ndarray:
    """Scores <h_final[t*], readout> [V, B(, R)] with deltas added after one site at every position."""
    require_sequence(prefix, "recompute_scores")
    deltas = np.asarray(deltas, np.float32)
    if deltas.ndim not in (2, 3, 4) or deltas.shape[-1] != config.d_model:
        raise ValueError(f"recompute_scores: deltas have shape {deltas.shape}; expected [V, D], [V, B, D] "
                         "or [V, B, T, D]")
    if not 0 <= layer < config.n_layers:
        raise ValueError(f"recompute_scores: layer {layer} out of range [0, {config.n_layers})")
    sub = int(sublayer_index(sublayer))
    readout = jnp.asarray(chunking.as_readout(readout, prefix.batch, config.d_model))
    n = deltas.shape[0]
    chunk = chunk or default_chunk(prefix)
    return chunking.map_chunks(
        lambda idx: _scores_chunk(params, prefix, layer, sub, deltas[idx], readout, config=config),
        n, chunk, desc=f"recompute L{layer}.{SUBLAYERS[sub]}")

