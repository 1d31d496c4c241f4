"""A static-shape key/value cache, so prefill and every decode step compile once."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from emojax.config import ModelConfig

Array = Any


@struct.dataclass
class KVCache:
    """Keys/values of every layer for S slots; slot s holds the s-th token fed to the model.

    k, v      [L, B, S, K, Dh]   rotated keys and values (or, in per-layer form, tuples of L [B, S, K, Dh])
    valid     [B, S]             slot holds a real (non-padding) token
    length    []                 slots filled so far (the same for every row: prompts are left-padded)
    next_pos  [B]                position id the next token of each row gets
    t_star    [B]                position id of the last prompt token (-1 until a prompt is fed)
    """

    k: Array
    v: Array
    valid: Array
    length: Array
    next_pos: Array
    t_star: Array

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, slots: int, dtype: Any = jnp.float32) -> "KVCache":
        shape = (config.n_layers, batch, slots, config.n_kv_heads, config.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, slots), bool),
            length=jnp.zeros((), jnp.int32),
            next_pos=jnp.zeros((batch,), jnp.int32),
            t_star=jnp.full((batch,), -1, jnp.int32),
        )

    @property
    def slots(self) -> int:
        return self.valid.shape[1]

    def per_layer(self) -> "KVCache":
        """k and v as tuples of per-layer arrays: a decode step then updates each layer's buffer in
        place, where writing into one stacked array made XLA copy all of it on every step."""
        return self.replace(k=tuple(self.k), v=tuple(self.v))

    def stacked(self) -> "KVCache":
        """The inverse of `per_layer`."""
        return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))
