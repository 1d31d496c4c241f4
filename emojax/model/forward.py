"""The forward pass: a pure function of (params, tokens, intervention), layers run by `lax.scan`.

One layer body serves every layer, so compile time does not grow with depth, and every intervention
field with a leading layer axis is scanned alongside the stacked weights (design.md §2).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from emojax.model import taps as taps_lib
from emojax.model.config import ModelConfig
from emojax.model.interventions import Intervention, check_fits, selectors
from emojax.model.kv_cache import KVCache
from emojax.model.rope import apply_rope, rope_tables

Array = Any
LOGITS_MODES = ("all", "last", "none")


@struct.dataclass
class Output:
    """logits [B, T, V] ("all"), [B, 1, V] ("last") or None; taps {name: array}; the updated cache."""

    logits: Array | None
    taps: dict[str, Array]
    cache: KVCache | None


def rms_norm(x: Array, gain: Array, eps: float, axis: int = -1) -> Array:
    """Normalise over the feature `axis`; `gain` must broadcast against x (e.g. [D, 1] for x [D, B])."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=axis, keepdims=True) + eps)
    return gain * normed.astype(x.dtype)


def rms(x: Array, axis: int = -1) -> Array:
    """The paper's steering scale rho(h) = sqrt(mean h^2 + 1e-12) over the feature `axis`, kept."""
    xf = x.astype(jnp.float32)
    return jnp.sqrt(jnp.mean(xf * xf, axis=axis, keepdims=True) + 1e-12).astype(x.dtype)


def lm_head(params: dict[str, Any]) -> Array:
    """The LM head as [D, V]: its own matrix, or the transposed embedding when the two are tied."""
    return params["lm_head"] if "lm_head" in params else params["embed"].T


def _per_row(value: Array, batched_ndim: int) -> Array:
    """Broadcast a per-layer edit of rank `batched_ndim - 1` (shared) or `batched_ndim` (per row)
    against activations [B, T, ...]."""
    return value[:, None] if value.ndim == batched_ndim else value


def _attention_batched(q: Array, k: Array, v: Array, allowed: Array, config: ModelConfig) -> Array:
    """Grouped-query attention as batched products over (row, kv head): what accelerators run best."""
    b, t, _, dh = q.shape
    groups = config.n_heads // config.n_kv_heads
    q = q.reshape(b, t, config.n_kv_heads, groups, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (dh ** -0.5)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, config.n_heads, dh)


def _attention_by_row(q: Array, k: Array, v: Array, allowed: Array, config: ModelConfig) -> Array:
    """The same attention one batch row at a time, each kv head's products as plain matrix products.

    XLA's CPU backend runs batched products several times slower than plain ones (a 16 x 128-token
    prefill of the default model: 38 ms against 12 ms per layer), so on CPU a loop over rows wins."""
    groups, dh = config.n_heads // config.n_kv_heads, q.shape[-1]

    def row(args: tuple[Array, Array, Array, Array]) -> Array:
        q_r, k_r, v_r, allowed_r = args  # [T, H, Dh], [S, K, Dh], [S, K, Dh], [T, S]
        t = q_r.shape[0]
        outs = []
        for head in range(config.n_kv_heads):
            q_h = q_r[:, head * groups:(head + 1) * groups].transpose(1, 0, 2).reshape(groups * t, dh)
            scores = jnp.matmul(q_h, k_r[:, head].T, preferred_element_type=jnp.float32) * (dh ** -0.5)
            scores = jnp.where(allowed_r, scores.reshape(groups, t, -1), jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1).astype(v_r.dtype).reshape(groups * t, -1)
            outs.append(jnp.matmul(probs, v_r[:, head]).reshape(groups, t, dh).transpose(1, 0, 2))
        return jnp.concatenate(outs, axis=1)

    return jax.lax.map(row, (q, k, v, allowed))


def attention(q: Array, k: Array, v: Array, allowed: Array, config: ModelConfig) -> Array:
    """Grouped-query attention. q [B,T,H,Dh] (rotated), k/v [B,S,K,Dh], allowed [B,T,S] -> [B,T,H,Dh].

    The row form on CPU, the batched form elsewhere, chosen when the program is lowered."""
    return jax.lax.platform_dependent(
        q, k, v, allowed, cpu=functools.partial(_attention_by_row, config=config),
        default=functools.partial(_attention_batched, config=config))


def _layer(x: Array, p: dict[str, Array], iv: dict[str, Array] | None, sel: dict[str, Array],
           cos: Array, sin: Array, past: tuple[Array, Array, Array] | None, allowed: Array,
           config: ModelConfig) -> tuple[Array, dict[str, Array], tuple[Array, Array]]:
    """One decoder layer with its edits. Returns the new residual, the activations and this call's
    (k, v). `sel` holds the position selectors of the edit groups that are on (the others are left
    out). `past` = (keys [B,S,K,Dh], values, filled length) of this layer's cache, or None."""
    b, t, _ = x.shape
    acts = {"resid_pre": x}
    h = rms_norm(x, p["attn_norm"], config.rms_eps)
    q, k, v = h @ p["wq"], h @ p["wk"], h @ p["wv"]
    if config.qkv_bias:
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    q = apply_rope(q.reshape(b, t, config.n_heads, config.head_dim), cos, sin)
    k = apply_rope(k.reshape(b, t, config.n_kv_heads, config.head_dim), cos, sin)
    v = v.reshape(b, t, config.n_kv_heads, config.head_dim)
    if past is None:
        keys, values = k, v
    else:
        past_k, past_v, length = past
        keys = jax.lax.dynamic_update_slice(past_k, k.astype(past_k.dtype), (0, length, 0, 0))
        values = jax.lax.dynamic_update_slice(past_v, v.astype(past_v.dtype), (0, length, 0, 0))
    z = attention(q, keys, values, allowed, config)
    if "head" in sel:
        scale = _per_row(iv["head_scale"], 2)[..., None]
        add = _per_row(iv["head_add"], 3)
        z = jnp.where(sel["head"][..., None, None], z * scale + add, z)
    z = z.reshape(b, t, config.q_dim)
    acts["z"] = z
    attn_out = z @ p["wo"]
    acts["attn_out"] = attn_out
    m = x + attn_out
    if "resid" in sel:
        m = _edit_resid(m, iv, 0, sel["resid"])
    acts["resid_mid"] = m
    u = rms_norm(m, p["mlp_norm"], config.rms_eps)
    g = jax.nn.silu(u @ p["w_gate"]) * (u @ p["w_up"])
    if "neuron" in sel:
        scale, add = _per_row(iv["neuron_scale"], 2), _per_row(iv["neuron_add"], 2)
        g = jnp.where(sel["neuron"][..., None], g * scale + add, g)
    acts["g"] = g
    mlp_out = g @ p["w_down"]
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
    cos, sin = rope_tables(positions, config)

    if cache is None:
        causal = jnp.tril(jnp.ones((t, t), bool))
        allowed = causal[None] & valid[:, None, :]
    else:
        slot_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.length))
        slot_ids = jnp.arange(cache.slots)
        query_slots = cache.length + jnp.arange(t)
        allowed = (slot_ids[None, :] <= query_slots[:, None])[None] & slot_valid[:, None, :]

    x = params["embed"][tokens]
    directions = directions or {}
    # Per-layer direction stacks [L, K, w] are scanned; shared stacks [K, w] are closed over.
    layer_dirs = {k: d for k, d in directions.items() if k != "final" and jnp.ndim(d) == 3}
    shared_dirs = {k: d for k, d in directions.items() if k not in layer_dirs}

    # The cache is scanned as an input (each layer reads its own slice) and only this call's keys and
    # values come out; they are written into the full cache once, after the scan. Carrying the
    # full cache through the scan instead made XLA copy all of it in every layer of every step.
    def body(x, xs):
        p, iv_l, dirs_l, past_kv = xs
        past = None if cache is None else (*past_kv, cache.length)
        out, acts, (k, v) = _layer(x, p, iv_l, sel, cos, sin, past, allowed, config)
        dirs_l = {**shared_dirs, **dirs_l}
        tapped = {name: taps_lib.take(taps, name, acts[name], dirs_l.get(name))
                  for name in taps.layer_points}
        return out, (tapped, None if cache is None else (k, v))

    xs = (params["layers"], None if iv is None else iv.layer_edits(), layer_dirs,
          None if cache is None else (cache.k, cache.v))
    x, (layer_taps, new_kv) = jax.lax.scan(body, x, xs, unroll=unroll)

    out_taps = {name: jnp.moveaxis(val, 0, 1) for name, val in layer_taps.items()}
    final = rms_norm(x, params["final_norm"], config.rms_eps)
    if "final" in taps.points:
        out_taps["final"] = taps_lib.take(taps, "final", final, directions.get("final"))
    out_logits = None
    if logits != "none":
        head_in = final[:, -1:] if logits == "last" else final
        out_logits = jnp.einsum("btd,dv->btv", head_in, lm_head(params), preferred_element_type=jnp.float32)

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
