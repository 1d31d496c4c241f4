"""The decoder layer for the scans, split into its two sublayers (attention, MLP).

Two shapes of work are needed: one query token (t*) against cached keys/values of the prefix, for
suffix passes, and whole left-padded sequences, for recompute-from-layer and attribution. Both compose
the pieces of `emojax.model.block` (the ones the forward pass is made of), so every shortcut agrees
with the forward pass up to float rounding, for every family. The branch outputs returned here are
what enters the residual (after the post-sublayer norm of the families that have one).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from emojax.model import block
from emojax.model.config import ModelConfig

Array = Any
Params = dict[str, Any]


def layer_params(layers: Params, index: Array) -> Params:
    """The weights of layer `index` (a traced scalar is fine) from the stacked layer pytree."""
    return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, index, 0, keepdims=False), layers)


def layer_attention(geo: block.Geometry, config: ModelConfig, layer: Any) -> tuple[Array, Array, Array]:
    """(cos, sin, allowed) of `layer` (a Python int or a traced index): its RoPE base and window."""
    if isinstance(layer, int):
        return block.layer_geometry(geo, *block.layer_settings(config, layer=layer))
    return block.layer_geometry(geo, *block.traced_settings(config, layer))


def last_geometry(last_pos: Array, past_valid: Array, config: ModelConfig) -> block.Geometry:
    """Attention geometry of the token at t* (slot S) over S cached slots plus itself: tables [B, Dh]
    at position ids last_pos [B]; allowed [B, S + 1] from past_valid [B, S]."""
    b, s = past_valid.shape
    allowed = jnp.concatenate([past_valid, jnp.ones((b, 1), bool)], axis=1)
    geo = block.geometry(last_pos[:, None], allowed, s - jnp.arange(s + 1), config)
    return geo._replace(**{name: None if table is None else table[:, 0]
                           for name, table in zip(("cos", "sin", "cos_local", "sin_local"), geo[:4])})


def attention_last(x: Array, p: Params, past_k: Array, past_v: Array, cos: Array, sin: Array, allowed: Array,
                   config: ModelConfig) -> tuple[Array, Array]:
    """Attention branch for the token at t*.

    x [B, D] residual at t*; past_k/past_v [B, S, K, Dh] rotated keys/values of the earlier positions;
    cos/sin [B, Dh] RoPE tables at t*; allowed [B, S + 1] (the earlier slots, then t* itself; the
    layer's window applied). Returns (o_attn [B, D], z [B, H*Dh]).
    """
    q, k, v = block.qkv(block.norm(x, p["attn_norm"], config), p, cos, sin, config)
    z = block.attention_one(q, past_k, past_v, k, v, allowed, config).reshape(x.shape[0], config.q_dim)
    return block.attn_out(z, p, config), z


def attention_heads_full(x: Array, p: Params, cos: Array, sin: Array, allowed: Array,
                         config: ModelConfig) -> Array:
    """Head outputs z [B, T, H*Dh] (the o-projection input) over whole sequences.

    x [B, T, D]; cos/sin [B, T, Dh]; allowed [B, T, T] (causal, not padding, the layer's window)."""
    b, t, _ = x.shape
    q, k, v = block.qkv(block.norm(x, p["attn_norm"], config), p, cos, sin, config)
    return block.attention_batched(q, k, v, allowed, config).reshape(b, t, config.q_dim)


def attention_full(x: Array, p: Params, cos: Array, sin: Array, allowed: Array,
                   config: ModelConfig) -> tuple[Array, Array]:
    """Attention branch over whole sequences: (o_attn [B, T, D], z [B, T, H*Dh])."""
    z = attention_heads_full(x, p, cos, sin, allowed, config)
    return block.attn_out(z, p, config), z


def mlp_input(m: Array, p: Params, config: ModelConfig) -> Array:
    """u = N_mlp(m), the normed MLP input (what the same-layer head score reads)."""
    return block.norm(m, p["mlp_norm"], config)


def mlp_activation(m: Array, p: Params, config: ModelConfig) -> Array:
    """Neuron activations g [..., F] (the down-projection input) from the mid-layer residual m."""
    return block.mlp_hidden(mlp_input(m, p, config), p, config)


def mlp(m: Array, p: Params, config: ModelConfig) -> tuple[Array, Array]:
    """MLP branch on the mid-layer residual m [..., D]. Returns (o_mlp [..., D], g [..., F])."""
    g = mlp_activation(m, p, config)
    return block.mlp_out(g, p, config), g


def sequence_geometry(mask: Array, config: ModelConfig) -> block.Geometry:
    """The attention geometry of a left-padded batch (tables [B, T, Dh], mask [B, T, T]), exactly as
    `emojax.forward` derives it without a cache."""
    valid = jnp.asarray(mask, bool)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
    t = valid.shape[1]
    allowed = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]
    return block.geometry(positions, allowed, jnp.arange(t)[:, None] - jnp.arange(t)[None, :], config)


def final_norm(x: Array, params: Params, config: ModelConfig) -> Array:
    return block.final_norm(x, params, config)


def project_readout(final: Array, readout: Array) -> Array:
    """Scores <final, readout>. final [..., B, D]; readout [B, D] -> [..., B] or [B, R, D] -> [..., B, R]."""
    final = final.astype(jnp.float32)
    readout = readout.astype(jnp.float32)
    if readout.ndim == 2:
        return jnp.einsum("...bd,bd->...b", final, readout)
    return jnp.einsum("...bd,brd->...br", final, readout)
