"""One-token suffix passes: exact perturbed runs for edits and read-outs at t* alone (method.md T6).

Every single-layer edit at t* (zeroing or scaling heads or neurons, mean ablation, adding to a
branch output or to the residual) is a residual delta added right after one sublayer (a branch
output is what enters the residual; for head and neuron edits under post-sublayer norms the delta is
taken through the norm, exactly: `emojax.model.block.residual_change`):

    site (l, "attn"):  m_l[t*]     += delta      (head edits, attention-branch injections)
    site (l, "mlp"):   x_{l+1}[t*] += delta      (neuron edits, MLP-branch injections, steering)

A perturbed run then starts from the cached clean state at that site and runs the remaining
sublayers for the single token t*, attending to the cached keys/values of the earlier positions,
and reads `<h_final[t*], readout>`. Variants of one site run together (vmapped, in memory-bounded
chunks); the start layer is a traced index into the stacked weights (`lax.fori_loop(l, L, ...)`), so
one compilation serves every site.

    scores = suffix_scores(params, prefix, deltas, layer=12, sublayer="mlp", readout=v, config=cfg)

deltas [V, B, D] (per row) or [V, D] (shared); `layer`/`sublayer` are scalars or per-variant [V]
arrays (variants are grouped by site). readout: [D] shared, [B, D] one per row, or [B, R, D];
scores come back as [V, B] or [V, B, R]. `clean_scores(prefix, readout)` gives the unedited score.

Edits at t* in several layers at once are not a single delta; `suffix_intervention_scores` runs
them through `emojax.forward` for the last token on the prefix cache, with any Intervention whose
edits touch t* only.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig
from emojax.model.forward import forward
from emojax.model.interventions import Intervention
from emojax.model.taps import TapSpec
from emojax.scan import chunking
from emojax.scan.layers import (attention_last, final_norm, last_geometry, layer_attention, layer_params, mlp,
                                project_readout)
from emojax.scan.prefix import Prefix

Array = Any
SUBLAYERS = ("attn", "mlp")


class ScanResult(NamedTuple):
    """effect = s_edited - s_clean per variant and row ([..., B] or [..., B, R]); base = s_clean."""

    effect: np.ndarray
    base: np.ndarray


def sublayer_index(sublayer: Any) -> np.ndarray:
    """"attn" -> 0, "mlp" -> 1 (also accepts 0/1, scalars or arrays)."""
    arr = np.asarray(sublayer)
    if arr.dtype.kind in "US":
        bad = sorted(set(arr.ravel().tolist()) - set(SUBLAYERS))
        if bad:
            raise ValueError(f"sublayer {bad} unknown; expected one of {SUBLAYERS}")
        return (arr == "mlp").astype(np.int32)
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"sublayer index must be 0 (attn) or 1 (mlp); got {np.unique(arr)}")
    return arr.astype(np.int32)


def clean_scores(prefix: Prefix, readout: Array) -> np.ndarray:
    """Unedited scores <h_final[t*], readout>: [B] or [B, R]."""
    readout = chunking.as_readout(readout, prefix.batch, prefix.final.shape[-1])
    return np.asarray(project_readout(prefix.final, jnp.asarray(readout)))


def suffix_final(params: dict[str, Any], prefix: Prefix, layer: Array, sublayer: Array, deltas: Array,
                 config: ModelConfig) -> Array:
    """h_final[t*] [V, B, D] after adding deltas [V, B, D] right after sublayer (layer, sublayer).

    Pure and traceable (layer and sublayer may be traced scalars); the scans call it inside their
    own jitted chunk functions.
    """
    start = jnp.where(sublayer == 0, prefix.resid_mid[:, layer], prefix.resid_post[:, layer])
    x0 = start[None] + deltas
    geo = last_geometry(prefix.last_pos, prefix.valid, config)
    skip_first_attention = sublayer == 0

    def body(i: Array, x: Array) -> Array:
        p = layer_params(params["layers"], i)
        past_k, past_v = prefix.k[i], prefix.v[i]
        cos, sin, allowed = layer_attention(geo, config, i)

        def with_attention(x: Array) -> Array:
            attend = lambda xv: attention_last(xv, p, past_k, past_v, cos, sin, allowed, config)[0]
            return x + jax.vmap(attend)(x)

        m = jax.lax.cond(skip_first_attention & (i == layer), lambda x: x, with_attention, x)
        return m + mlp(m, p, config)[0]

    x = jax.lax.fori_loop(layer + sublayer, config.n_layers, body, x0)
    return final_norm(x, params, config)


@functools.partial(jax.jit, static_argnames=("config",))
def _scores_chunk(params: dict[str, Any], prefix: Prefix, layer: Array, sublayer: Array, deltas: Array,
                  readout: Array, *, config: ModelConfig) -> Array:
    return project_readout(suffix_final(params, prefix, layer, sublayer, deltas, config), readout)


def suffix_scores(params: dict[str, Any], prefix: Prefix, deltas: Array, *, layer: Any, sublayer: Any,
                  readout: Array, config: ModelConfig, chunk: int | None = None) -> np.ndarray:
    """Scores <h_final[t*], readout> with each variant's delta added after its site (see module doc)."""
    deltas = np.asarray(deltas, np.float32)
    if deltas.ndim not in (2, 3) or deltas.shape[-1] != config.d_model:
        raise ValueError(f"suffix_scores: deltas have shape {deltas.shape}; expected [V, D] or [V, B, D]")
    n = deltas.shape[0]
    if deltas.ndim == 2:
        deltas = np.broadcast_to(deltas[:, None], (n, prefix.batch, config.d_model))
    layers = np.broadcast_to(np.asarray(layer, np.int32), (n,))
    subs = np.broadcast_to(sublayer_index(sublayer), (n,))
    if layers.size and (layers.min() < 0 or layers.max() >= config.n_layers):
        raise ValueError(f"suffix_scores: layer out of range [0, {config.n_layers})")
    readout = jnp.asarray(chunking.as_readout(readout, prefix.batch, config.d_model))
    chunk = chunk or chunking.default_chunk(prefix.batch)
    out = np.zeros((n,) + clean_scores(prefix, readout).shape, np.float32)
    for site_layer, site_sub in sorted(set(zip(layers.tolist(), subs.tolist()))):
        rows = np.nonzero((layers == site_layer) & (subs == site_sub))[0]
        out[rows] = chunking.map_chunks(
            lambda idx: _scores_chunk(params, prefix, site_layer, site_sub, deltas[rows[idx]], readout,
                                      config=config),
            len(rows), chunk, desc=f"suffix L{site_layer}.{SUBLAYERS[site_sub]}")
    return out


def _require_last_only(ivs: Intervention) -> None:
    """Edits outside t* would change the cached prefix; only identity values may use other selectors."""
    groups = {"resid": (("resid_add", 0.0), ("resid_add_rms", 0.0)),
              "neuron": (("neuron_scale", 1.0), ("neuron_add", 0.0)),
              "head": (("head_scale", 1.0), ("head_add", 0.0))}
    for group, fields in groups.items():
        where = getattr(ivs, f"{group}_where")
        if where in ("last", "from_last", "none"):
            continue
        if any(not np.all(np.asarray(getattr(ivs, name)) == identity) for name, identity in fields):
            raise ValueError(f"suffix_intervention_scores: {group}_where={where!r} edits positions before t*; "
                             "use 'last' (or recompute_scores for edits at every position)")


@functools.partial(jax.jit, static_argnames=("config",))
def _intervention_chunk(params: dict[str, Any], prefix: Prefix, ivs: Intervention, readout: Array, *,
                        config: ModelConfig) -> Array:
    cache = prefix.as_cache()
    last = prefix.last_token[:, None]

    def one(iv: Intervention) -> Array:
        out = forward(params, last, config=config, cache=cache, iv=iv, logits="none",
                      taps=TapSpec(points=("final",), at="last"))
        return project_readout(out.taps["final"], readout)

    return jax.vmap(one)(ivs)


def suffix_intervention_scores(params: dict[str, Any], prefix: Prefix, ivs: Intervention, *,
                               readout: Array, config: ModelConfig, chunk: int | None = None) -> np.ndarray:
    """Scores [V, B(, R)] for stacked Interventions (leading variant axis V) whose edits touch t*
    only, possibly in many layers: one-token passes through all layers on the prefix cache."""
    _require_last_only(ivs)
    readout = jnp.asarray(chunking.as_readout(readout, prefix.batch, config.d_model))
    n = jax.tree_util.tree_leaves(ivs)[0].shape[0]
    chunk = chunk or chunking.default_chunk(prefix.batch)
    return chunking.map_chunks(
        lambda idx: _intervention_chunk(params, prefix, jax.tree_util.tree_map(lambda a: a[idx], ivs),
                                        readout, config=config),
        n, chunk, desc="suffix interventions")
