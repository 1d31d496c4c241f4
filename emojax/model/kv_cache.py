"""A static-shape key/value cache, so prefill and every decode step compile once."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from emojax.model.config import ModelConfig

Array = Any


@struct.dataclass
class KVCache:
    """Keys/values of every layer for S slots; slot s holds the s-th token fed to the model.

    k, v      [L, B, S, K, Dh]   rotated keys and values (see `per_layer` for the decode step's form)
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
        """The decode step's form: k and v as tuples of per-layer arrays, keys [B, K, Dh, S] and values
        [B, K, S, Dh]. Each layer then updates its own buffers in place (writing into one stacked array
        made XLA copy all of it on every step), and these are the layouts the attention products read
        without transposing the cache."""
        return self.replace(k=tuple(layer.transpose(0, 2, 3, 1) for layer in self.k),
                            v=tuple(layer.transpose(0, 2, 1, 3) for layer in self.v))

    def stacked(self) -> "KVCache":
        """The inverse of `per_layer`."""
        return self.replace(k=jnp.stack([layer.transpose(0, 3, 1, 2) for layer in self.k]),
                            v=jnp.stack([layer.transpose(0, 2, 1, 3) for layer in self.v]))
