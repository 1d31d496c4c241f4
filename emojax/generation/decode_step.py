"""One cached decode step (a single new token per row), laid out for the small batches of decoding.

A decode step multiplies every weight by only B rows. On CPU, XLA's matmul runs about twice as fast
when that small axis is the *last* one (W[out, in] @ h[in, B]) as when it leads (h[B, in] @ W), and a
`lax.scan` over stacked weights copies each layer's weight slice on every step, which doubles the
memory traffic of a step that is already bound by reading the weights. So this step keeps
activations transposed, [D, B], and runs the layers as an unrolled loop over per-layer weights that
`decode_weights` transposes once per `generate` call. The cache is kept as per-layer buffers in the
layouts the attention products read (`KVCache.per_layer`). The math is that of `emojax.model.block`
in its COLUMNS layout, i.e. `model.forward` with a cache and one token per row, edits included; tests
hold the two to the same logits and cache.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from emojax.model import block
from emojax.model.block import COLUMNS
from emojax.model.config import ModelConfig
from emojax.model.forward import rms
from emojax.model.interventions import SHARED_RANK, Intervention, selectors
from emojax.model.kv_cache import KVCache

Array = Any
_MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def decode_weights(params: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    """Per-layer weights with the matrices as [out, in], and the LM head as [V, D]."""
    stacked = params["layers"]
    layers = []
    for i in range(config.n_layers):
        layer = {name: value[i] for name, value in stacked.items()}
        layers.append({**layer, **{name: layer[name].T for name in _MATRICES}})
    # A tied head's two transposes cancel when this runs inside `generate`'s jit.
    return {"layers": layers, "embed": params["embed"], "final_norm": params["final_norm"],
            "head": block.lm_head(params).T}


def _columns(value: Array, shared_rank: int) -> Array:
    """An edit of rank `shared_rank` when shared, or per row ([B, ...]), broadcastable against [..., B]."""
    return jnp.moveaxis(value, 0, -1) if value.ndim == shared_rank + 1 else value[..., None]


def _layer_edit(edits: dict[str, Array], name: str) -> Array:
    """One layer's slice of an edit field (its layer axis gone), as `_columns`."""
    return _columns(edits[name], SHARED_RANK[name] - 1)


def _edit_resid(h: Array, edits: dict[str, Array], site: int, sel: Array) -> Array:
    # One site of a layer's [2, D] (or per-row [B, 2, D]) residual edits: rank 1 when shared.
    add = _columns(edits["resid_add"][..., site, :], 1)
    add_rms = _columns(edits["resid_add_rms"][..., site, :], 1)
    return jnp.where(sel, h + add + rms(h, axis=0) * add_rms, h)


def decode_step(weights: dict[str, Any], token: Array, cache: KVCache, *, config: ModelConfig,
                iv: Intervention | None = None) -> tuple[Array, KVCache]:
    """Feed one token per row [B] after the cache's filled slots; returns (logits [B, V] float32, cache).

    `cache` is in per-layer form (`KVCache.per_layer()`), and so is the cache returned. Same
    positions, t* and position selectors as `forward(..., cache=cache)` on tokens [B, 1]."""
    c = config
    b = token.shape[0]
    real = jnp.ones((b, 1), bool)
    positions = cache.next_pos[:, None]
    t_star = jnp.where(cache.t_star >= 0, cache.t_star, cache.next_pos)
    # [B] per group that is on, broadcast on the last axis of the [..., B] activations.
    sel = {} if iv is None else {group: s[:, 0] for group, s in selectors(iv, positions, real, t_star).items()}
    slot_valid = jax.lax.dynamic_update_slice(cache.valid, real, (0, cache.length))
    slots = jnp.arange(cache.slots)
    allowed = (slots <= cache.length)[None] & slot_valid  # [B, S]
    geo = block.geometry(positions, allowed, (cache.length - slots)[None], c)
    geo = geo._replace(**{name: None if table is None else table[:, 0].T  # [Dh, B]
                          for name, table in zip(("cos", "sin", "cos_local", "sin_local"), geo[:4])})

    x = block.embed(weights, token, c).T  # [D, B]
    keys, values = list(cache.k), list(cache.v)
    layer_edits = None if iv is None else iv.layer_edits()
    for layer, p in enumerate(weights["layers"]):
        edits = None if iv is None else {name: value[layer] for name, value in layer_edits.items()}
        cos, sin, allowed_l = block.layer_geometry(geo, *block.layer_settings(c, layer=layer))
        q, k, v = block.qkv(block.norm(x, p["attn_norm"], c, COLUMNS), p, cos, sin, c, COLUMNS)
        k, v = k.astype(keys[layer].dtype), v.astype(values[layer].dtype)  # [K, Dh, B]
        # Each layer writes its own buffer and then reads it, so XLA updates it in place.
        at = (0, 0, 0, cache.length)
        keys[layer] = jax.lax.dynamic_update_slice(keys[layer], k.transpose(2, 0, 1)[..., None], at)
        values[layer] = jax.lax.dynamic_update_slice(values[layer], v.transpose(2, 0, 1)[:, :, None],
                                                     (0, 0, cache.length, 0))
        z = block.attention_columns(q, keys[layer], values[layer], allowed_l, c)  # [H, Dh, B]
        if "head" in sel:
            scale = _layer_edit(edits, "head_scale")[:, None]
            add = _layer_edit(edits, "head_add")
            z = jnp.where(sel["head"], z * scale + add, z)
        m = x + block.attn_out(block.merge_heads(z, COLUMNS), p, c, COLUMNS)
        if "resid" in sel:
            m = _edit_resid(m, edits, 0, sel["resid"])
        g = block.mlp_hidden(block.norm(m, p["mlp_norm"], c, COLUMNS), p, c, COLUMNS)
        if "neuron" in sel:
            scale = _layer_edit(edits, "neuron_scale")
            add = _layer_edit(edits, "neuron_add")
            g = jnp.where(sel["neuron"], g * scale + add, g)
        x = m + block.mlp_out(g, p, c, COLUMNS)
        if "resid" in sel:
            x = _edit_resid(x, edits, 1, sel["resid"])

    final = block.final_norm(x, weights, c, COLUMNS)
    logits = block.logits(final, weights["head"], c, COLUMNS)
    new_cache = cache.replace(k=tuple(keys), v=tuple(values), valid=slot_valid, length=cache.length + 1,
                              next_pos=cache.next_pos + 1, t_star=t_star.astype(jnp.int32))
    return logits, new_cache
