"""The forward pass: a pure function of (params, tokens, intervention), layers run by `lax.scan`.

One layer body serves every layer, so compile time does not grow with depth, and every intervention
field with a leading layer axis is scanned alongside the stacked weights (design.md §2). The layer
composes the pieces of `emojax.model.block`; where layers differ (a sliding window, a local RoPE
base) their settings are scanned alongside too (`block.layer_table`).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from emojax.model import block
from emojax.model import taps as taps_lib
from emojax.model.block import lm_head, rms_norm  # noqa: F401  (re-exported: their home before block.py)
from emojax.model.config import ModelConfig
from emojax.model.interventions import Intervention, check_fits, selectors
from emojax.model.kv_cache import KVCache

Array = Any
LOGITS_MODES = ("all", "last", "none")


@struct.dataclass
class Output:
    """logits [B, T, V] ("all"), [B, 1, V] ("last") or None; taps {name: array}; the updated cache."""

    logits: Array | None
    taps: dict[str, Array]
    cache: KVCache | None


def rms(x: Array, axis: int = -1) -> Array:
    """The paper's steering scale rho(h) = sqrt(mean h^2 + 1e-12) over the feature `axis`, kept."""
    xf = x.astype(jnp.float32)
    return jnp.sqrt(jnp.mean(xf * xf, axis=axis, keepdims=True) + 1e-12).astype(x.dtype)


def _per_row(value: Array, batched_ndim: int) -> Array:
    """Broadcast a per-layer edit of rank `batched_ndim - 1` (shared) or `batched_ndim` (per row)
    against activations [B, T, ...]."""
    return value[:, None] if value.ndim == batched_ndim else value


def _layer(x: Array, p: dict[str, Array], iv: dict[str, Array] | None, sel: dict[str, Array],
           cos: Array, sin: Array, past: tuple[Array, Array, Array] | None, allowed: Array,
           config: ModelConfig) -> tuple[Array, dict[str, Array], tuple[Array, Array]]:
    """One decoder layer (emojax.model.block) with its edits. Returns the new residual, the activations
    and this call's (k, v). `sel` holds the position selectors of the edit groups that are on (the
    others are left out). `past` = (keys [B,S,K,Dh], values, filled length) of this layer's cache, or
    None. cos/sin and `allowed` are this layer's (its RoPE base and window)."""
    b, t, _ = x.shape
    acts = {"resid_pre": x}
    q, k, v = block.qkv(block.norm(x, p["attn_norm"], config), p, cos, sin, config)
    if past is None:
        keys, values = k, v
    else:
        past_k, past_v, length = past
        keys = jax.lax.dynamic_update_slice(past_k, k.astype(past_k.dtype), (0, length, 0, 0))
        values = jax.lax.dynamic_update_slice(past_v, v.astype(past_v.dtype), (0, length, 0, 0))
    z = block.attention(q, keys, values, allowed, config)
    if "head" in sel:
        scale = _per_row(iv["head_scale"], 2)[..., None]
        add = _per_row(iv["head_add"], 3)
        z = jnp.where(sel["head"][..., None, None], z * scale + add, z)
    z = z.reshape(b, t, config.q_dim)
    acts["z"] = z
    attn_out = block.attn_out(z, p, config)
    acts["attn_out"] = attn_out
    m = x + attn_out
    if "resid" in sel:
        m = _edit_resid(m, iv, 0, sel["resid"])
    acts["resid_mid"] = m
    g = block.mlp_hidden(block.norm(m, p["mlp_norm"], config), p, config)
    if "neuron" in sel:
        scale, add = _per_row(iv["neuron_scale"], 2), _per_row(iv["neuron_add"], 2)
        g = jnp.where(sel["neuron"][..., None], g * scale + add, g)
    acts["g"] = g
    mlp_out = block.mlp_out(g, p, config)
    acts["mlp_out"] = mlp_out
    out = m + mlp_out
    if "resid" in sel:
        out = _edit_resid(out, iv, 1, sel["resid"])
    acts["resid_post"] = out
    return out, acts, (k, v)


def _edit_resid(h: Array, iv: dict[str, Array], site: int, sel: Array) -> Array:
    add = _per_row(iv["resid_add"][..., site, :], 2)
    add_rms = _per_row(iv["resid_add_rms"][..., site, :], 2)
    return jnp.where(sel[..., None], h + add + rms(h) * add_rms, h)


def check_token_ids(tokens: Array, vocab_size: int, where: str) -> None:
    """Refuse token ids outside [0, vocab_size) (a gather would silently clamp them to the last id).
    Only concrete values can be checked: inside a caller's jit the caller's own boundary checks."""
    if isinstance(tokens, jax.core.Tracer):
        return
    values = np.asarray(tokens)
    if values.size and (values.min() < 0 or values.max() >= vocab_size):
        bad = values[(values < 0) | (values >= vocab_size)]
        raise ValueError(f"{where}: tokens holds ids outside the vocabulary [0, {vocab_size}) "
                         f"({bad.size} of them, e.g. {int(bad[0])})")


def check_mask_shape(tokens: Array, mask: Array | None, where: str) -> None:
    if mask is not None and jnp.shape(mask) != jnp.shape(tokens):
        raise ValueError(f"{where}: mask has shape {jnp.shape(mask)}, but tokens has {jnp.shape(tokens)}; "
                         "they must match")


def forward(params: dict[str, Any], tokens: Array, *, config: ModelConfig, mask: Array | None = None,
            positions: Array | None = None, cache: KVCache | None = None,
            iv: Intervention | None = None, taps: taps_lib.TapSpec = taps_lib.TapSpec(),
            directions: dict[str, Array] | None = None, last_pos: Array | None = None,
            logits: str = "all", unroll: int = 1) -> Output:
    """Run the model on a token batch (compiled; see `_forward`).

    Refused with a ValueError naming the argument: token ids outside the vocabulary, a mask whose
    shape differs from the tokens', an intervention whose shapes do not match the config."""
    check_token_ids(tokens, config.vocab_size, "forward")
    return _forward(params, tokens, config=config, mask=mask, positions=positions, cache=cache, iv=iv, taps=taps,
                    directions=directions, last_pos=last_pos, logits=logits, unroll=unroll)


@functools.partial(jax.jit, static_argnames=("config", "taps", "logits", "unroll"))
def _forward(params: dict[str, Any], tokens: Array, *, config: ModelConfig, mask: Array | None = None,
             positions: Array | None = None, cache: KVCache | None = None,
             iv: Intervention | None = None, taps: taps_lib.TapSpec = taps_lib.TapSpec(),
             directions: dict[str, Array] | None = None, last_pos: Array | None = None,
             logits: str = "all", unroll: int = 1) -> Output:
    """Run the model on a token batch.

    tokens [B, T] int; mask [B, T] bool marks real tokens (prompts are left-padded); positions
    default to the running count of real tokens (continuing from the cache). With `cache`, the
    tokens are written after its filled slots and attend to everything before them. `last_pos` [B]
    is the position id of t* for the intervention selectors; by default the cache's (once a prompt
    has been fed) or the last token of this call. `iv=None` runs the plain model.
    """
    if logits not in LOGITS_MODES:
        raise ValueError(f"forward: logits={logits!r}; expected one of {LOGITS_MODES}")
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"forward: tokens has shape {jnp.shape(tokens)}; expected [B, T]")
    check_mask_shape(tokens, mask, "forward")
    b, t = tokens.shape
    if iv is not None:
        check_fits(iv, config, b)
    valid = jnp.ones((b, t), bool) if mask is None else jnp.asarray(mask, bool)
    start = jnp.zeros((b,), jnp.int32) if cache is None else cache.next_pos
    if positions is None:
        positions = start[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
        positions = jnp.maximum(positions, 0)
    if last_pos is None:
        last_pos = positions[:, -1] if cache is None else jnp.where(cache.t_star >= 0, cache.t_star,
                                                                     positions[:, -1])
    sel = {} if iv is None else selectors(iv, positions, valid, last_pos)

    # Slots: this call's tokens are written after the cache's filled ones; the window counts slots.
    if cache is None:
        causal = jnp.tril(jnp.ones((t, t), bool))
        allowed = causal[None] & valid[:, None, :]
        distance = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]
    else:
        slot_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.length))
        slot_ids = jnp.arange(cache.slots)
        query_slots = cache.length + jnp.arange(t)
        allowed = (slot_ids[None, :] <= query_slots[:, None])[None] & slot_valid[:, None, :]
        distance = query_slots[:, None] - slot_ids[None, :]
    geo = block.geometry(positions, allowed, distance, config)
    table = block.layer_table(config)

    x = block.embed(params, tokens, config)
    directions = directions or {}
    # Per-layer direction stacks [L, K, w] are scanned; shared stacks [K, w] are closed over.
    layer_dirs = {k: d for k, d in directions.items() if k != "final" and jnp.ndim(d) == 3}
    shared_dirs = {k: d for k, d in directions.items() if k not in layer_dirs}

    # The cache is scanned as an input (each layer reads its own slice) and only this call's keys and
    # values come out; they are written into the full cache once, after the scan. Carrying the
    # full cache through the scan instead made XLA copy all of it in every layer of every step.
    def body(x, xs):
        p, iv_l, dirs_l, past_kv, table_l = xs
        past = None if cache is None else (*past_kv, cache.length)
        cos, sin, allowed_l = block.layer_geometry(geo, *block.layer_settings(config, table_l))
        out, acts, (k, v) = _layer(x, p, iv_l, sel, cos, sin, past, allowed_l, config)
        dirs_l = {**shared_dirs, **dirs_l}
        tapped = {name: taps_lib.take(taps, name, acts[name], dirs_l.get(name))
                  for name in taps.layer_points}
        return out, (tapped, None if cache is None else (k, v))

    xs = (params["layers"], None if iv is None else iv.layer_edits(), layer_dirs,
          None if cache is None else (cache.k, cache.v), table)
    x, (layer_taps, new_kv) = jax.lax.scan(body, x, xs, unroll=unroll)

    out_taps = {name: jnp.moveaxis(val, 0, 1) for name, val in layer_taps.items()}
    final = block.final_norm(x, params, config)
    if "final" in taps.points:
        out_taps["final"] = taps_lib.take(taps, "final", final, directions.get("final"))
    out_logits = None
    if logits != "none":
        head_in = final[:, -1:] if logits == "last" else final
        out_logits = block.logits(head_in, lm_head(params), config)

    new_cache = None
    if cache is not None:
        at = (0, 0, cache.length, 0, 0)
        new_cache = cache.replace(
            k=jax.lax.dynamic_update_slice(cache.k, new_kv[0].astype(cache.k.dtype), at),
            v=jax.lax.dynamic_update_slice(cache.v, new_kv[1].astype(cache.v.dtype), at),
            valid=slot_valid, length=cache.length + t,
            next_pos=jnp.max(jnp.where(valid, positions, start[:, None] - 1), axis=1) + 1,
            t_star=jnp.where(cache.t_star >= 0, cache.t_star, last_pos).astype(jnp.int32))
    return Output(logits=out_logits, taps=out_taps, cache=new_cache)
