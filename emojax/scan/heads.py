"""Attention-head scans: the closed-form same-layer score (S4b) and exact causal scans.

Same-layer importance (method.md S4b, T5). Zeroing head h of layer l at every position leaves
layer l's own state at t* equal to m' = m_l[t*] - W_O[:, h] z_{l,h}[t*], so with
s = <N^post_l(m), v^{attn,l}> (the MLP's input RMSNorm with gain, D5; Gemma's pre-feedforward norm):

For families with post-sublayer norms (Gemma 2/3) the attention branch adds N_attn_post(z W_O) to the
residual, so the head's removal is taken inside that norm: m' = m - N_attn_post(o) + N_attn_post(o -
W_O[:, h] z_{l,h}) with o = z_l[t*] W_O. This is still exact (zeroing at earlier positions cannot
change layer l's output at t*), and exact for head sets too (their changes are summed inside the
norm); only the contributions no longer add outside it.

    importance, base = head_ablation_same_layer(params, z, resid_mid, directions, config=cfg)
        z [N, L, H*Dh], resid_mid [N, L, D] at t* (e.g. prefix.z, prefix.resid_mid);
        directions [L, D] shared or [N, L, D] per row (each item's emotion);
        importance [N, L, H] = s - s'; base [N, L] = s.
    scores, base = head_set_ablation_same_layer(..., sets [S, L, H])      # head sets: subtract the sum

Both take `replacement` (emojax.scan.ablation) for mean / group-mean ablation.

Causal read-out at the final layer, <h_final[t*], readout>:

    causal_head_scan(params, prefix, readout, config=cfg, positions="last"|"all") -> ScanResult
        effect [L', H, B(, R)] for every head of the scanned layers
    head_edit_scores(params, prefix, layer, scale=[S, H], add=[S, H, Dh] | [S, B, H, Dh], ...)
        scores [S, B(, R)] for arbitrary head sets of one layer: z_h <- scale_h z_h + add_h

positions="last" edits z at t* only: a one-token suffix pass from layer l (emojax.scan.suffix).
positions="all" edits every real position: recompute-from-layer (emojax.scan.recompute), which needs
`capture_prefix(..., keep_sequence=True)`.
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
from emojax.scan.layers import project_readout
from emojax.scan.prefix import Prefix
from emojax.scan.recompute import clean_site_state, recompute_final, require_sequence
from emojax.scan.suffix import ScanResult, clean_scores, suffix_final

Array = Any
POSITIONS = ("last", "all")


def _check_positions(positions: str, caller: str) -> None:
    if positions not in POSITIONS:
        raise ValueError(f"{caller}: positions={positions!r}; expected one of {POSITIONS}")


def _per_head_wo(params: dict[str, Any], config: ModelConfig) -> Array:
    """W_O split per query head: [L, H, Dh, D]."""
    wo = params["layers"]["wo"]
    return wo.reshape(config.n_layers, config.n_heads, config.head_dim, config.d_model)


@functools.partial(jax.jit, static_argnames=("config",))
def _same_layer_chunk(params: dict[str, Any], z: Array, mid: Array, directions: Array, ref: Array,
                      sets: Array | None, *, config: ModelConfig) -> tuple[Array, Array]:
    layers = params["layers"]
    n = z.shape[0]
    zh = z.reshape(n, config.n_layers, config.n_heads, config.head_dim)
    ref = ref.reshape(ref.shape[:-1] + (config.n_heads, config.head_dim))
    contrib = jnp.einsum("nlhd,lhde->nlhe", zh - ref, _per_head_wo(params, config))  # [N, L, H, D]
    gain = layers["mlp_norm"]
    dirs = jnp.broadcast_to(directions, mid.shape)
    base = jnp.einsum("nld,nld->nl", block.norm(mid, gain, config), dirs)
    # With post-sublayer norms m = x + N_post(z W_O): the edited z changes the branch output inside the
    # norm (o = z W_O at t*, recomputed from z), so m' = m + N_post(o - contrib) - N_post(o).
    o = jnp.einsum("nlq,lqd->nld", z, layers["wo"]) if config.post_norms else None
    post = layers.get("attn_post_norm")
    if sets is None:
        change = block.residual_change(None if o is None else o[:, :, None], -contrib,
                                       None if post is None else post[:, None], config)
        ablated = jnp.einsum("nlhd,nld->nlh", block.norm(mid[:, :, None] + change, gain[:, None], config), dirs)
    else:
        change = block.residual_change(None if o is None else o[:, None],
                                       -jnp.einsum("slh,nlhd->nsld", sets, contrib), post, config)
        ablated = jnp.einsum("nsld,nld->nsl", block.norm(mid[:, None] + change, gain, config), dirs)
    return ablated, base


def _same_layer(params: dict[str, Any], z: Array, resid_mid: Array, directions: Array, sets: Array | None,
                config: ModelConfig, replacement: Array | None, chunk: int, caller: str) -> tuple[Array, Array]:
    z = np.asarray(z, np.float32)
    mid = np.asarray(resid_mid, np.float32)
    n = z.shape[0]
    if z.shape[1:] != (config.n_layers, config.q_dim) or mid.shape != (n, config.n_layers, config.d_model):
        raise ValueError(f"{caller}: z {z.shape} and resid_mid {mid.shape} must be [N, L, H*Dh] and [N, L, D]")
    directions = np.asarray(directions, np.float32)
    per_row_dirs = directions.ndim == 3
    draws = ablation.replacement_draws(replacement, caller)
    ablated_sum, base = 0.0, None
    for rep in draws:
        rep = np.zeros((config.n_layers, config.q_dim), np.float32) if rep is None else rep
        per_row_rep = rep.ndim == 3
        ablated, base = chunking.map_chunks(
            lambda idx: _same_layer_chunk(params, z[idx], mid[idx], directions[idx] if per_row_dirs else directions,
                                          rep[idx] if per_row_rep else rep, sets, config=config),
            n, chunk, desc=caller)
        ablated_sum = ablated_sum + ablated
    return ablated_sum / len(draws), base


def head_ablation_same_layer(params: dict[str, Any], z: Array, resid_mid: Array, directions: Array, *,
                             config: ModelConfig, replacement: Array | None = None,
                             chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form S4b importance: (s - s' [N, L, H], s [N, L]); see the module docstring."""
    ablated, base = _same_layer(params, z, resid_mid, directions, None, config, replacement, chunk,
                                "head_ablation_same_layer")
    return base[..., None] - ablated, base


def head_set_ablation_same_layer(params: dict[str, Any], z: Array, resid_mid: Array, directions: Array,
                                 sets: Array, *, config: ModelConfig, replacement: Array | None = None,
                                 chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Same-layer scores with whole head sets ablated: sets [S, L, H] (1 = ablate) ->
    (s' [S, N, L], s [N, L]). Exact for any set within one layer (the contributions add)."""
    sets = jnp.asarray(sets, jnp.float32)
    if sets.ndim != 3 or sets.shape[1:] != (config.n_layers, config.n_heads):
        raise ValueError(f"head_set_ablation_same_layer: sets {sets.shape}; expected [S, {config.n_layers}, "
                         f"{config.n_heads}]")
    ablated, base = _same_layer(params, z, resid_mid, directions, sets, config, replacement, chunk,
                                "head_set_ablation_same_layer")
    return np.moveaxis(ablated, 1, 0), base


def _head_deltas(params: dict[str, Any], layer: Array, z: Array, scale: Array, add: Array,
                 config: ModelConfig) -> Array:
    """Residual deltas of the edits z_h <- scale_h z_h + add_h at layer `layer`: the change of what the
    attention branch adds to the residual, through the post-sublayer norm where there is one (exact).

    z [B, (T,) H*Dh]; scale [S, H]; add [S, B, H, Dh] -> [S, B, (T,) D]."""
    wo_l = _per_head_wo(params, config)[layer]
    zh = z.reshape(z.shape[:-1] + (config.n_heads, config.head_dim))
    if z.ndim == 3:  # every position: the add is the same at each position of a row
        change = (scale[:, None, None, :, None] - 1.0) * zh[None] + add[:, :, None]
        change = jnp.einsum("sbthd,hde->sbte", change, wo_l)
    else:
        change = (scale[:, None, :, None] - 1.0) * zh[None] + add
        change = jnp.einsum("sbhd,hde->sbe", change, wo_l)
    if not config.post_norms:
        return change
    o = z @ params["layers"]["wo"][layer]
    return block.residual_change(o[None], change, params["layers"]["attn_post_norm"][layer], config)


@functools.partial(jax.jit, static_argnames=("config", "positions"))
def _edit_chunk(params: dict[str, Any], prefix: Prefix, layer: Array, scale: Array, add: Array,
                readout: Array, *, config: ModelConfig, positions: str) -> Array:
    if positions == "last":
        deltas = _head_deltas(params, layer, prefix.z[:, layer], scale, add, config)
        final = suffix_final(params, prefix, layer, 0, deltas, config)
    else:
        start, z = clean_site_state(params, prefix, layer, 0, config)
        deltas = _head_deltas(params, layer, z, scale, add, config) * prefix.mask[None, :, :, None]
        final = recompute_final(params, prefix, layer, 0, start, deltas, config)
    return project_readout(final, readout)


def _default_chunk(prefix: Prefix, positions: str) -> int:
    width = prefix.batch * (prefix.mask.shape[1] if positions == "all" else 1)
    return chunking.default_chunk(width)


def _edit_scores(params: dict[str, Any], prefix: Prefix, layer: int, scale: np.ndarray, add: np.ndarray,
                 readout: Array, config: ModelConfig, positions: str, chunk: int | None) -> np.ndarray:
    n = scale.shape[0]
    chunk = chunk or _default_chunk(prefix, positions)
    return chunking.map_chunks(
        lambda idx: _edit_chunk(params, prefix, layer, scale[idx], add[idx], readout, config=config,
                                positions=positions),
        n, chunk, desc=f"heads L{layer} ({positions})")


def head_edit_scores(params: dict[str, Any], prefix: Prefix, layer: int, *, scale: Array,
                     add: Array | None = None, readout: Array, config: ModelConfig, positions: str = "last",
                     chunk: int | None = None) -> np.ndarray:
    """Scores [S, B(, R)] after z_h <- scale[s, h] z_h + add[s, (b,) h] for the heads of `layer`, at
    t* ("last") or at every real position ("all"). scale [S, H]; add [S, H, Dh] or [S, B, H, Dh]."""
    _check_positions(positions, "head_edit_scores")
    if positions == "all":
        require_sequence(prefix, "head_edit_scores")
    scale = np.asarray(scale, np.float32)
    b = prefix.batch
    add = np.zeros(scale.shape + (config.head_dim,), np.float32) if add is None else np.asarray(add, np.float32)
    if add.ndim == 3:
        add = np.broadcast_to(add[:, None], (add.shape[0], b) + add.shape[1:])
    readout = jnp.asarray(chunking.as_readout(readout, b, config.d_model))
    return _edit_scores(params, prefix, layer, scale, np.ascontiguousarray(add), readout, config, positions,
                        chunk)


def causal_head_scan(params: dict[str, Any], prefix: Prefix, readout: Array, *, config: ModelConfig,
                     positions: str = "last", replacement: Array | None = None,
                     layers: Sequence[int] | None = None, chunk: int | None = None) -> ScanResult:
    """Effect on <h_final[t*], readout> of ablating each head alone (z_h <- replacement, 0 by default),
    at t* or at every position. effect [len(layers), H, B(, R)]; base [B(, R)]."""
    _check_positions(positions, "causal_head_scan")
    if positions == "all":
        require_sequence(prefix, "causal_head_scan")
    layers = list(range(config.n_layers)) if layers is None else list(layers)
    h, dh, b = config.n_heads, config.head_dim, prefix.batch
    readout = jnp.asarray(chunking.as_readout(readout, b, config.d_model))
    base = clean_scores(prefix, readout)
    scale = 1.0 - np.eye(h, dtype=np.float32)  # variant h zeroes head h
    draws = ablation.replacement_draws(replacement, "causal_head_scan")
    total = np.zeros((len(layers), h) + base.shape, np.float32)
    for rep in draws:
        for i, layer in enumerate(layers):
            ref = ablation.replacement_at_layer(rep, layer, b, config.q_dim).reshape(b, h, dh)
            add = np.eye(h, dtype=np.float32)[:, None, :, None] * ref[None]  # [H, B, H, Dh]
            total[i] += _edit_scores(params, prefix, layer, scale, add, readout, config, positions, chunk)
    return ScanResult(effect=total / len(draws) - base, base=base)
