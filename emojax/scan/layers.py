"""Decoder-layer math for the scans, split into its two sublayers (attention, MLP).

Two shapes of work are needed: one query token (t*) against cached keys/values of the prefix, for
suffix passes, and whole left-padded sequences, for recompute-from-layer and attribution. Both follow
the numerics of `emojax.model.forward` (float32 scores, the same norm and RoPE code), so every shortcut agrees
with the forward pass up to float rounding.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from emojax.model.config import ModelConfig
from emojax.model.forward import rms_norm
from emojax.model.rope import apply_rope, rope_tables

Array = Any
Params = dict[str, Any]


def layer_params(layers: Params, index: Array) -> Params:
    """The weights of layer `index` (a traced scalar is fine) from the stacked layer pytree."""
    return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, index, 0, keepdims=False), layers)


def _project_qkv(h: Array, p: Params, config: ModelConfig) -> tuple[Array, Array, Array]:
    q, k, v = h @ p["wq"], h @ p["wk"], h @ p["wv"]
    if config.qkv_bias:
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    return q, k, v


def attention_last(x: Array, p: Params, past_k: Array, past_v: Array, past_valid: Array, cos: Array,
                   sin: Array, config: ModelConfig) -> tuple[Array, Array]:
    """Attention branch for the token at t*.

    x [B, D] residual at t*; past_k/past_v [B, S, K, Dh] rotated keys/values of the earlier positions;
    past_valid [B, S]; cos/sin [B, 1, Dh] RoPE tables at t*. Returns (o_attn [B, D], z [B, H*Dh]).
    """
    b = x.shape[0]
    heads, kv_heads, dh = config.n_heads, config.n_kv_heads, config.head_dim
    q, k, v = _project_qkv(rms_norm(x, p["attn_norm"], config.rms_eps), p, config)
    q = apply_rope(q.reshape(b, 1, heads, dh), cos, sin)[:, 0].reshape(b, kv_heads, heads // kv_heads, dh)
    k = apply_rope(k.reshape(b, 1, kv_heads, dh), cos, sin)[:, 0]
    v = v.reshape(b, kv_heads, dh)
    scale = dh ** -0.5
    past_scores = jnp.einsum("bkgd,bskd->bkgs", q, past_k, preferred_element_type=jnp.float32) * scale
    past_scores = jnp.where(past_valid[:, None, None, :], past_scores, jnp.finfo(jnp.float32).min)
    self_score = jnp.einsum("bkgd,bkd->bkg", q, k, preferred_element_type=jnp.float32)[..., None] * scale
    probs = jax.nn.softmax(jnp.concatenate([past_scores, self_score], axis=-1), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgs,bskd->bkgd", probs[..., :-1], past_v) + probs[..., -1:] * v[:, :, None, :]
    z = out.reshape(b, config.q_dim)
    return z @ p["wo"], z


def attention_heads_full(x: Array, p: Params, cos: Array, sin: Array, allowed: Array,
                         config: ModelConfig) -> Array:
    """Head outputs z [B, T, H*Dh] (the o-projection input) over whole sequences.

    x [B, T, D]; cos/sin [B, T, Dh]; allowed [B, T, T] (causal and not padding)."""
    b, t, _ = x.shape
    heads, kv_heads, dh = config.n_heads, config.n_kv_heads, config.head_dim
    q, k, v = _project_qkv(rms_norm(x, p["attn_norm"], config.rms_eps), p, config)
    q = apply_rope(q.reshape(b, t, heads, dh), cos, sin).reshape(b, t, kv_heads, heads // kv_heads, dh)
    k = apply_rope(k.reshape(b, t, kv_heads, dh), cos, sin)
    v = v.reshape(b, t, kv_heads, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (dh ** -0.5)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, config.q_dim)


def attention_full(x: Array, p: Params, cos: Array, sin: Array, allowed: Array,
                   config: ModelConfig) -> tuple[Array, Array]:
    """Attention branch over whole sequences: (o_attn [B, T, D], z [B, T, H*Dh])."""
    z = attention_heads_full(x, p, cos, sin, allowed, config)
    return z @ p["wo"], z


def mlp_activation(m: Array, p: Params, config: ModelConfig) -> Array:
    """Neuron activations g [..., F] (the down-projection input) from the mid-layer residual m."""
    u = rms_norm(m, p["mlp_norm"], config.rms_eps)
    return jax.nn.silu(u @ p["w_gate"]) * (u @ p["w_up"])


def mlp(m: Array, p: Params, config: ModelConfig) -> tuple[Array, Array]:
    """MLP branch on the mid-layer residual m [..., D]. Returns (o_mlp [..., D], g [..., F])."""
    g = mlp_activation(m, p, config)
    return g @ p["w_down"], g


def sequence_geometry(mask: Array, config: ModelConfig) -> tuple[Array, Array, Array, Array]:
    """Position ids [B, T], RoPE tables [B, T, Dh] x2 and the attention mask [B, T, T] of a
    left-padded batch, exactly as `emojax.forward` derives them without a cache."""
    valid = jnp.asarray(mask, bool)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
    cos, sin = rope_tables(positions, config)
    t = valid.shape[1]
    allowed = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]
    return positions, cos, sin, allowed


def final_norm(x: Array, params: Params, config: ModelConfig) -> Array:
    return rms_norm(x, params["final_norm"], config.rms_eps)


def project_readout(final: Array, readout: Array) -> Array:
    """Scores <final, readout>. final [..., B, D]; readout [B, D] -> [..., B] or [B, R, D] -> [..., B, R]."""
    final = final.astype(jnp.float32)
    readout = readout.astype(jnp.float32)
    if readout.ndim == 2:
        return jnp.einsum("...bd,bd->...b", final, readout)
    return jnp.einsum("...bd,brd->...br", final, readout)
