"""Run a prompt batch once and keep what every exact scan reuses.

    prefix = capture_prefix(params, tokens, mask, config=cfg)                    # suffix scans
    prefix = capture_prefix(params, tokens, mask, config=cfg, keep_sequence=True) # + recompute scans

Prompts are left-padded (mask [B, T] marks real tokens), so the last column is t* for every row.
The capture is one plain `emojax.forward` pass; nothing is edited. It keeps:

    k, v         [L, B, T-1, K, Dh]  rotated keys/values of the positions before t* (padding masked)
    valid        [B, T-1]            which of those slots hold real tokens
    last_pos     [B]                 position id of t*
    resid_pre    [B, L, D]           x_l at t*
    resid_mid    [B, L, D]           m_l at t*
    resid_post   [B, L, D]           x_{l+1} at t* (pre-norm; the last entry is x_L)
    z            [B, L, H*Dh]        head outputs at t* (o-projection input)
    g            [B, L, F]           neuron activations at t* (down-projection input)
    final        [B, D]              h_final[t*] (post final norm)
    mask         [B, T]              the prompt mask
    last_token   [B]                 the token id at t*
    resid_all    [B, L+1, T, D]      x_0 .. x_L at every position, only with keep_sequence=True

Edits made at t* alone leave every earlier position untouched, so a perturbed run only needs a
one-token pass from the edited layer upward against these keys/values (method.md §12, T6).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh

from emojax import parallel
from emojax.model.config import ModelConfig
from emojax.model.forward import forward
from emojax.model.kv_cache import KVCache
from emojax.model.taps import TapSpec

Array = Any
_LAST_POINTS = ("resid_pre", "resid_mid", "resid_post", "z", "g", "final")


@struct.dataclass
class Prefix:
    """The reusable state of a prompt batch (fields documented in the module docstring)."""

    k: Array
    v: Array
    valid: Array
    last_pos: Array
    resid_pre: Array
    resid_mid: Array
    resid_post: Array
    z: Array
    g: Array
    final: Array
    mask: Array
    last_token: Array
    resid_all: Array | None = None

    @property
    def batch(self) -> int:
        return self.final.shape[0]

    def _map_rows(self, fn: Any) -> "Prefix":
        """fn(array, row axis) applied to every field (k/v carry the layer axis first)."""
        mapped = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            mapped[field.name] = None if value is None else fn(value, 1 if field.name in ("k", "v") else 0)
        return self.replace(**mapped)

    def take(self, rows: Array) -> "Prefix":
        """The prefix of a subset (or repetition) of rows, e.g. one row per (item, emotion) pair."""
        rows = jnp.asarray(rows, jnp.int32)
        return self._map_rows(lambda value, axis: jnp.take(value, rows, axis=axis))

    def place(self, mesh: Mesh) -> "Prefix":
        """The same prefix with its rows split over the mesh's 'data' axis (see `capture_prefix`)."""
        return self._map_rows(lambda value, axis: parallel.place_rows(value, mesh, axis=axis))

    def as_cache(self) -> KVCache:
        """A KV cache holding the T-1 prefix tokens with one free slot, ready for a one-token
        `emojax.forward(params, last_tokens[:, None], cache=...)`."""
        pad = [(0, 0), (0, 0), (0, 1), (0, 0), (0, 0)]
        b, s = self.valid.shape
        return KVCache(
            k=jnp.pad(self.k, pad), v=jnp.pad(self.v, pad),
            valid=jnp.pad(self.valid, [(0, 0), (0, 1)]),
            length=jnp.asarray(s, jnp.int32),
            next_pos=self.last_pos.astype(jnp.int32),
            t_star=jnp.full((b,), -1, jnp.int32),
        )


def _check_batch(tokens: Array, mask: Array) -> None:
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(f"capture_prefix: tokens {tokens.shape} and mask {mask.shape} must both be [B, T]")
    if tokens.shape[1] < 2:
        raise ValueError("capture_prefix: prompts need at least two token columns (a prefix and t*)")
    if not bool(jnp.all(mask[:, -1])):
        raise ValueError("capture_prefix: the last column must be a real token in every row "
                         "(prompts are left-padded)")


def capture_prefix(params: dict[str, Any], tokens: Array, mask: Array | None = None, *,
                   config: ModelConfig, keep_sequence: bool = False, mesh: Mesh | None = None) -> Prefix:
    """One forward pass over left-padded prompts; see the module docstring for what is kept.

    mesh: place the weights by their logical axes and the prompt rows over 'data' first. The prefix
    then lives on the mesh, and every scan run from it is partitioned the same way by XLA.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
    _check_batch(tokens, mask)
    if mesh is not None:
        params = parallel.shard_params(params, mesh, config)
        tokens, mask = parallel.place_rows((tokens, mask), mesh)
    return _capture(params, tokens, mask, config=config, keep_sequence=keep_sequence)


@jax.jit
def _slice_prefix_kv(cache: KVCache) -> tuple[Array, Array]:
    return cache.k[:, :, :-1], cache.v[:, :, :-1]


def _capture(params: dict[str, Any], tokens: Array, mask: Array, *, config: ModelConfig,
             keep_sequence: bool) -> Prefix:
    b, t = tokens.shape
    cache = KVCache.empty(config, b, t, params["embed"].dtype)
    out = forward(params, tokens, config=config, mask=mask, cache=cache, logits="none",
                  taps=TapSpec(points=_LAST_POINTS, at="last"))
    k, v = _slice_prefix_kv(out.cache)
    resid_all = None
    if keep_sequence:
        seq = forward(params, tokens, config=config, mask=mask, logits="none",
                      taps=TapSpec(points=("resid_pre", "resid_post"), at="all")).taps
        resid_all = jnp.concatenate([seq["resid_pre"], seq["resid_post"][:, -1:]], axis=1)
    taps = out.taps
    return Prefix(k=k, v=v, valid=mask[:, :-1], last_pos=out.cache.t_star,
                  resid_pre=taps["resid_pre"], resid_mid=taps["resid_mid"], resid_post=taps["resid_post"],
                  z=taps["z"], g=taps["g"], final=taps["final"], mask=mask, last_token=tokens[:, -1],
                  resid_all=resid_all)
