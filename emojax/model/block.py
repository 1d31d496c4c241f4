"""The decoder block, one definition of each piece, for every family (design.md §9).

A layer is, with the options of `ModelConfig` (defaults: the Llama block):

    h      = N_attn(x)                                   norm: plain RMSNorm, or Gemma's (1 + w) in float32
    q,k,v  = h W_q (+ b_q), h W_k (+ b_k), h W_v (+ b_v) optional biases (Qwen2)
    q, k   = RoPE(N_q(q)), RoPE(N_k(k))                  optional q/k norms (Qwen3, Gemma 3); a per-layer
                                                         RoPE base (Gemma 3's local layers)
    z      = softmax(mask(cap(s * q.k))) v               s = head_dim^-1/2 or query_pre_attn_scalar^-1/2;
                                                         cap: optional tanh soft-cap (Gemma 2); mask:
                                                         causal, padding, optional sliding window
    o_attn = N_attn_post(z W_O)                          optional post-sublayer norm (Gemma 2/3)
    m      = x + o_attn
    u      = N_mlp(m)                                    Gemma's pre-feedforward norm
    g      = act(u W_gate) * (u W_up)                    act: SiLU or tanh-GELU
    o_mlp  = N_mlp_post(g W_down)                        optional post-sublayer norm (Gemma 2/3)
    x'     = m + o_mlp

and the model adds the embedding scale (Gemma: sqrt(D), cast to the compute dtype), the final norm
and the LM head with its optional soft-cap. `attn_out` and `mlp_out` (the taps, and the "branch
outputs" the method edits) are o_attn and o_mlp: what enters the residual, i.e. *after* the
post-sublayer norm where a family has one. Head edits act on z and neuron edits on g, *before* it:
with post norms a component's effect on the residual is not linear in the component
(`residual_change` gives it exactly).

Two layouts: ROWS, activations [..., D] (features last) and input-major weights (x @ W), which the
forward pass and the scans use; COLUMNS, activations [D, B] (features first) and weights [out, in]
(W @ x), which the decode step uses because XLA's CPU matmul is faster with the small batch axis last
(emojax/generation/decode_step.py). Every piece takes the layout; the math is written once.

The sliding window counts cache slots, as transformers' masks count cache positions: a query in
slot q sees the keys of slots q - window + 1 .. q (`window_mask`). In a left-padded batch the real
tokens of a row fill consecutive slots, so this is also the last `window` positions.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig
from emojax.model.rope import rope_tables, rotate

Array = Any
Params = dict[str, Any]
ROWS, COLUMNS = "rows", "columns"
FULL_WINDOW = np.iinfo(np.int32).max  # the window of a full-attention layer in the per-layer table


# ---------------------------------------------------------------------------------------------
# Norms, products, heads


def rms_norm(x: Array, gain: Array, eps: float, axis: int = -1, offset: float = 0.0) -> Array:
    """RMSNorm over the feature `axis`; `gain` must broadcast against x (e.g. [D, 1] for x [D, B]).

    offset 0 (Llama): gain * normed, the normed value cast to x's dtype first. offset 1 (Gemma): the
    normed value times (1 + gain), both in float32, then cast, exactly as transformers' Gemma norms."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=axis, keepdims=True) + eps)
    if offset:
        return (normed * (offset + gain.astype(jnp.float32))).astype(x.dtype)
    return gain * normed.astype(x.dtype)


def norm(x: Array, gain: Array, config: ModelConfig, layout: str = ROWS) -> Array:
    """The model's RMSNorm of x over its features: x [..., W] with gain [W] (ROWS), or x [..., W, B]
    with gain [W] (COLUMNS; W is D for the residual, Dh for the q/k norms of heads [H, Dh, B])."""
    if layout == ROWS:
        return rms_norm(x, gain, config.rms_eps, offset=config.norm_offset)
    return rms_norm(x, gain[:, None], config.rms_eps, axis=-2, offset=config.norm_offset)


def linear(x: Array, w: Array, layout: str = ROWS) -> Array:
    """x @ w (ROWS, w [in, out]) or w @ x (COLUMNS, w [out, in])."""
    return x @ w if layout == ROWS else w @ x


def _bias(y: Array, b: Array, layout: str) -> Array:
    return y + b if layout == ROWS else y + b[:, None]


def split_heads(y: Array, n_heads: int, config: ModelConfig, layout: str = ROWS) -> Array:
    """[..., n*Dh] -> [..., n, Dh] (ROWS) or [n*Dh, B] -> [n, Dh, B] (COLUMNS)."""
    if layout == ROWS:
        return y.reshape(y.shape[:-1] + (n_heads, config.head_dim))
    return y.reshape((n_heads, config.head_dim) + y.shape[1:])


def merge_heads(z: Array, layout: str = ROWS) -> Array:
    """The inverse of `split_heads`."""
    return z.reshape(z.shape[:-2] + (-1,)) if layout == ROWS else z.reshape((-1,) + z.shape[2:])


def apply_rope(x: Array, cos: Array, sin: Array, layout: str = ROWS) -> Array:
    """Rotate heads x [..., n, Dh] by tables [..., Dh] (ROWS) or x [n, Dh, B] by tables [Dh, B] (COLUMNS)."""
    if layout == ROWS:
        return rotate(x, cos[..., None, :], sin[..., None, :])
    return rotate(x, cos, sin, axis=1)


def qkv(h: Array, p: Params, cos: Array, sin: Array, config: ModelConfig,
        layout: str = ROWS) -> tuple[Array, Array, Array]:
    """Queries, keys and values of the normed input h, split into heads, q and k normed (when the family
    has q/k norms) and rotated: ROWS h [..., D] -> [..., H, Dh], [..., K, Dh] x2; COLUMNS h [D, B] ->
    [H, Dh, B], [K, Dh, B] x2."""
    q, k, v = linear(h, p["wq"], layout), linear(h, p["wk"], layout), linear(h, p["wv"], layout)
    if config.qkv_bias:
        q, k, v = _bias(q, p["bq"], layout), _bias(k, p["bk"], layout), _bias(v, p["bv"], layout)
    q = split_heads(q, config.n_heads, config, layout)
    k = split_heads(k, config.n_kv_heads, config, layout)
    v = split_heads(v, config.n_kv_heads, config, layout)
    if config.qk_norm:
        q, k = norm(q, p["q_norm"], config, layout), norm(k, p["k_norm"], config, layout)
    return apply_rope(q, cos, sin, layout), apply_rope(k, cos, sin, layout), v


# ---------------------------------------------------------------------------------------------
# Attention core


def attention_probs(scores: Array, allowed: Array, config: ModelConfig) -> Array:
    """Softmax weights (float32) from raw float32 products q.k (keys on the last axis): the scale
    (head_dim^-1/2 or query_pre_attn_scalar^-1/2), the optional tanh soft-cap, then the mask, in
    transformers' order."""
    scores = scores * config.attn_scale
    if config.attn_softcap is not None:
        scores = jnp.tanh(scores / config.attn_softcap) * config.attn_softcap
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def window_mask(allowed: Array, distance: Array | None, window: Any) -> Array:
    """`allowed` restricted to keys at most window - 1 slots before the query (transformers'
    `kv_idx > q_idx - sliding_window`). distance = query slot - key slot, broadcastable against
    allowed; window None (static) or an int (traced: FULL_WINDOW for a full-attention layer)."""
    if window is None or distance is None:
        return allowed
    return allowed & (distance < window)


def _attention_batched(q: Array, k: Array, v: Array, allowed: Array, config: ModelConfig) -> Array:
    """Grouped-query attention as batched products over (row, kv head): what accelerators run best."""
    b, t, _, dh = q.shape
    groups = config.n_heads // config.n_kv_heads
    q = q.reshape(b, t, config.n_kv_heads, groups, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    probs = attention_probs(scores, allowed[:, None, None], config).astype(v.dtype)
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
            scores = jnp.matmul(q_h, k_r[:, head].T, preferred_element_type=jnp.float32)
            probs = attention_probs(scores.reshape(groups, t, -1), allowed_r, config)
            probs = probs.astype(v_r.dtype).reshape(groups * t, -1)
            outs.append(jnp.matmul(probs, v_r[:, head]).reshape(groups, t, dh).transpose(1, 0, 2))
        return jnp.concatenate(outs, axis=1)

    return jax.lax.map(row, (q, k, v, allowed))


def attention(q: Array, k: Array, v: Array, allowed: Array, config: ModelConfig) -> Array:
    """Grouped-query attention. q [B,T,H,Dh] (rotated), k/v [B,S,K,Dh], allowed [B,T,S] -> [B,T,H,Dh].

    The row form on CPU, the batched form elsewhere, chosen when the program is lowered."""
    return jax.lax.platform_dependent(
        q, k, v, allowed, cpu=functools.partial(_attention_by_row, config=config),
        default=functools.partial(_attention_batched, config=config))


def attention_batched(q: Array, k: Array, v: Array, allowed: Array, config: ModelConfig) -> Array:
    """`attention` in its batched form on every backend (the scans, which vmap it over variants)."""
    return _attention_batched(q, k, v, allowed, config)


def attention_one(q: Array, past_k: Array, past_v: Array, k: Array, v: Array, allowed: Array,
                  config: ModelConfig) -> Array:
    """One query per row against its cached keys and its own: q [B, H, Dh], past_k/past_v [B, S, K, Dh],
    k/v [B, K, Dh] (this token's), allowed [B, S + 1] (the last entry: the token itself) -> [B, H, Dh]."""
    b = q.shape[0]
    groups = config.n_heads // config.n_kv_heads
    q = q.reshape(b, config.n_kv_heads, groups, config.head_dim)
    past_scores = jnp.einsum("bkgd,bskd->bkgs", q, past_k, preferred_element_type=jnp.float32)
    self_score = jnp.einsum("bkgd,bkd->bkg", q, k, preferred_element_type=jnp.float32)[..., None]
    scores = jnp.concatenate([past_scores, self_score], axis=-1)
    probs = attention_probs(scores, allowed[:, None, None, :], config).astype(v.dtype)
    out = jnp.einsum("bkgs,bskd->bkgd", probs[..., :-1], past_v) + probs[..., -1:] * v[:, :, None, :]
    return out.reshape(b, config.n_heads, config.head_dim)


def attention_columns(q: Array, keys: Array, values: Array, allowed: Array, config: ModelConfig) -> Array:
    """The decode step's form: q [H, Dh, B] over keys [B, K, Dh, S] and values [B, K, S, Dh] where
    `allowed` [B, S]; returns [H, Dh, B]. The products take their operands in the layout XLA's dot
    wants (batch, contracted, free); only the small query and output are transposed."""
    # Products of low-precision operands are formed in float32 (exact) and summed in float32, as
    # `attention` does; XLA's CPU runtime has no bf16 x bf16 -> f32 batched dot.
    f32 = jnp.float32
    b = q.shape[-1]
    q = q.reshape(config.n_kv_heads, config.n_heads // config.n_kv_heads, config.head_dim, b)
    scores = jnp.einsum("bkgd,bkds->bkgs", q.transpose(3, 0, 1, 2).astype(f32), keys.astype(f32))
    probs = attention_probs(scores, allowed[:, None, None], config).astype(values.dtype)
    z = jnp.einsum("bkgs,bksd->bkgd", probs.astype(f32), values.astype(f32)).astype(values.dtype)
    return z.transpose(1, 2, 3, 0).reshape(config.n_heads, config.head_dim, b)


# ---------------------------------------------------------------------------------------------
# Where each layer attends: RoPE tables and masks per layer kind


class Geometry(NamedTuple):
    """What attention needs about positions, shared by the layers of one call.

    cos, sin        RoPE tables at the query positions ([..., Dh] for ROWS, [Dh, B] for COLUMNS)
    cos_local, ...  the same with the local base (None unless the family has one)
    allowed         causal and padding mask, keys on the last axis
    distance        query slot - key slot, broadcastable against `allowed` (None: no sliding layer)
    """

    cos: Array
    sin: Array
    cos_local: Array | None
    sin_local: Array | None
    allowed: Array
    distance: Array | None


def geometry(positions: Array, allowed: Array, distance: Array, config: ModelConfig) -> Geometry:
    """Tables for integer positions [B, T] (cos/sin [B, T, Dh]) and the masks; `distance` is dropped
    unless some layer has a window, and the local tables are built only when some layer uses them."""
    cos, sin = rope_tables(positions, config)
    local = any(config.local_rope_of(l) for l in range(config.n_layers))
    cos_l, sin_l = rope_tables(positions, config, local=True) if local else (None, None)
    windowed = any(config.window_of(l) is not None for l in range(config.n_layers))
    return Geometry(cos, sin, cos_l, sin_l, allowed, distance if windowed else None)


def layer_table(config: ModelConfig) -> dict[str, np.ndarray] | None:
    """Per-layer attention settings as arrays, to scan beside the stacked weights or index with a
    traced layer: window [L] int32 (FULL_WINDOW for full attention) and local_rope [L] bool. None when
    every layer is alike (then each setting is a static Python value)."""
    if config.uniform_layers:
        return None
    windows = [config.window_of(l) for l in range(config.n_layers)]
    return {"window": np.asarray([FULL_WINDOW if w is None else w for w in windows], np.int32),
            "local_rope": np.asarray([config.local_rope_of(l) for l in range(config.n_layers)], bool)}


def layer_settings(config: ModelConfig, table_l: dict[str, Array] | None = None,
                   layer: int | None = None) -> tuple[Any, Any]:
    """(window, local_rope) of one layer: from its slice of `layer_table` (traced), from a static layer
    index, or, for models whose layers are alike, the shared static values."""
    if table_l is not None:
        return table_l["window"], table_l["local_rope"]
    layer = 0 if layer is None else layer
    return config.window_of(layer), config.local_rope_of(layer)


def traced_settings(config: ModelConfig, layer: Array) -> tuple[Any, Any]:
    """`layer_settings` of a traced layer index (the scans' loops over layers)."""
    table = layer_table(config)
    if table is None:
        return layer_settings(config)
    return jnp.asarray(table["window"])[layer], jnp.asarray(table["local_rope"])[layer]


def layer_geometry(geo: Geometry, window: Any, local_rope: Any) -> tuple[Array, Array, Array]:
    """(cos, sin, allowed) of a layer with this window and RoPE kind (static or traced values)."""
    cos, sin = geo.cos, geo.sin
    if geo.cos_local is not None:
        if isinstance(local_rope, (bool, np.bool_)):
            cos, sin = (geo.cos_local, geo.sin_local) if local_rope else (cos, sin)
        else:
            cos, sin = jnp.where(local_rope, geo.cos_local, cos), jnp.where(local_rope, geo.sin_local, sin)
    return cos, sin, window_mask(geo.allowed, geo.distance, window)


# ---------------------------------------------------------------------------------------------
# Branch outputs and the MLP


def _post_norm(o: Array, p: Params, name: str, config: ModelConfig, layout: str) -> Array:
    return norm(o, p[name], config, layout) if config.post_norms else o


def attn_out(z: Array, p: Params, config: ModelConfig, layout: str = ROWS) -> Array:
    """What the attention branch adds to the residual: N_attn_post(z W_O), the norm only with post norms.
    z [..., H*Dh] (ROWS) or [H*Dh, B] (COLUMNS)."""
    return _post_norm(linear(z, p["wo"], layout), p, "attn_post_norm", config, layout)


def activation(x: Array, config: ModelConfig) -> Array:
    if config.activation == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.silu(x)


def mlp_hidden(u: Array, p: Params, config: ModelConfig, layout: str = ROWS) -> Array:
    """Neuron activations g = act(u W_gate) * (u W_up) of the normed MLP input u (down-projection input)."""
    return activation(linear(u, p["w_gate"], layout), config) * linear(u, p["w_up"], layout)


def mlp_out(g: Array, p: Params, config: ModelConfig, layout: str = ROWS) -> Array:
    """What the MLP branch adds to the residual: N_mlp_post(g W_down), the norm only with post norms."""
    return _post_norm(linear(g, p["w_down"], layout), p, "mlp_post_norm", config, layout)


POST_NORM_OF = {"attn": "attn_post_norm", "mlp": "mlp_post_norm"}


def residual_change(o: Array, change: Array, post_gain: Array | None, config: ModelConfig) -> Array:
    """The exact change of what a branch adds to the residual when its pre-norm output o (z W_O or
    g W_down, [..., D]) changes by `change`: N(o + change) - N(o) with post norms (gain `post_gain`,
    broadcastable against [..., D]), else `change` itself. This is how the scans turn head and neuron
    edits into residual deltas without approximating the post norm."""
    if not config.post_norms:
        return change
    return (rms_norm(o + change, post_gain, config.rms_eps, offset=config.norm_offset)
            - rms_norm(o, post_gain, config.rms_eps, offset=config.norm_offset))


# ---------------------------------------------------------------------------------------------
# Model ends: embedding, final norm, LM head


def embed(params: Params, tokens: Array, config: ModelConfig) -> Array:
    """Token embeddings [..., D], times the embedding scale cast to their dtype (Gemma: sqrt(D), as
    transformers casts it to the weights' dtype)."""
    x = jnp.asarray(params["embed"])[tokens]
    if config.embed_scale is not None:
        x = x * jnp.asarray(config.embed_scale, x.dtype)
    return x


def final_norm(x: Array, params: Params, config: ModelConfig, layout: str = ROWS) -> Array:
    return norm(x, params["final_norm"], config, layout)


def lm_head(params: Params) -> Array:
    """The LM head as [D, V]: its own matrix, or the transposed embedding when the two are tied."""
    return params["lm_head"] if "lm_head" in params else params["embed"].T


def softcap_logits(logits: Array, config: ModelConfig) -> Array:
    if config.final_softcap is None:
        return logits
    return jnp.tanh(logits / config.final_softcap) * config.final_softcap


def logits(final: Array, head: Array, config: ModelConfig, layout: str = ROWS) -> Array:
    """Float32 logits with the optional final soft-cap: ROWS final [..., D] @ head [D, V] -> [..., V];
    COLUMNS head [V, D] @ final [D, B] -> [B, V]."""
    if layout == ROWS:
        out = jnp.einsum("...d,dv->...v", final, head, preferred_element_type=jnp.float32)
    else:
        out = jnp.matmul(head.astype(jnp.float32), final.astype(jnp.float32)).T
    return softcap_logits(out, config)
