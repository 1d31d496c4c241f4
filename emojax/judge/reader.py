"""Reader-model features: a fixed, unmodified model reads each reply alone and its states are mean-pooled.

Whatever model wrote a reply, the same reader (by default the embedded SmolLM2-135M-Instruct) reads it
with no prompt and no chat template: the reply's first `max_tokens` tokens, left-padded into rows of
one width. One jitted `emojax.forward` (`logits="none"`) taps `resid_post` at every position; the
states of the chosen layers are averaged over the reply's tokens, giving one [len(layers) * D] vector
per reply. An empty reply gets zeros.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.forward import forward
from emojax.model.taps import TapSpec

RESID_ALL = TapSpec(points=("resid_post",), at="all")
PAD_MULTIPLE = 16
# Rows per forward; features are bit-identical for any batch composition at a fixed batch size.
READER_BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ReaderSpec:
    """Which model reads, which of its layers are pooled, and how much of each reply it reads."""

    model: str = "smollm2-135m-instruct"
    layers: tuple[int, ...] = (14, 20, 26)
    max_tokens: int = 64

    def __post_init__(self) -> None:
        if not self.layers or any(layer < 0 for layer in self.layers):
            raise ValueError(f"ReaderSpec.layers must be non-negative layer indices, got {self.layers}")
        if self.max_tokens < 1:
            raise ValueError(f"ReaderSpec.max_tokens must be positive, got {self.max_tokens}")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "layers": list(self.layers), "max_tokens": self.max_tokens}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ReaderSpec":
        return cls(model=str(data["model"]), layers=tuple(int(x) for x in data["layers"]),
                   max_tokens=int(data["max_tokens"]))


def token_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Each reply's first max_tokens tokens (no special tokens: the reader sees the reply alone)."""
    return [list(row[:max_tokens]) for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def bucket_width(length: int) -> int:
    """The row width a reply of `length` tokens is read at: a function of the reply alone."""
    return max(PAD_MULTIPLE, -(-length // PAD_MULTIPLE) * PAD_MULTIPLE)


def left_padded(ids: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [N, width] int32, mask [N, width] bool) with every row's tokens at its right end."""
    tokens = np.full((len(ids), width), pad_id, np.int32)
    mask = np.zeros((len(ids), width), bool)
    for i, row in enumerate(ids):
        if row:
            tokens[i, width - len(row):] = row
            mask[i, width - len(row):] = True
    return tokens, mask


@functools.partial(jax.jit, static_argnames=("config", "layers"))
def pooled_states(params: dict[str, Any], tokens: jax.Array, mask: jax.Array, *, config: Any,
                  layers: tuple[int, ...]) -> jax.Array:
    """[B, len(layers) * D] float32: resid_post of `layers` averaged over each row's real tokens."""
    out = forward(params, tokens, config=config, mask=mask, taps=RESID_ALL, logits="none")
    return pool(out.taps["resid_post"], mask, layers)


def pool(resid: jax.Array, mask: jax.Array, layers: tuple[int, ...]) -> jax.Array:
    """Mean over masked positions of resid [B, L, T, D] at `layers`, flattened to [B, len(layers) * D]."""
    chosen = resid[:, jnp.array(layers)].astype(jnp.float32)
    weight = mask.astype(jnp.float32)[:, None, :, None]
    mean = (chosen * weight).sum(axis=2) / jnp.maximum(weight.sum(axis=2), 1.0)
    return mean.reshape(mean.shape[0], -1)


def reader_features(model: Any, texts: Sequence[str], spec: ReaderSpec, *, batch_size: int = READER_BATCH_SIZE) -> np.ndarray:
    """[N, len(layers) * D] float32 pooled states of `model` reading each text.

    Replies are grouped by width (their length rounded up) and read in batches of `batch_size` rows (the
    last one filled up), so a reply's features depend on the reply alone, not on what it is batched with.
    """
    if max(spec.layers) >= model.config.n_layers:
        raise ValueError(f"reader: layer {max(spec.layers)} is outside {model.name}'s "
                         f"{model.config.n_layers} layers")
    out = np.zeros((len(texts), len(spec.layers) * model.config.d_model), np.float32)
    ids = token_ids(model.tokenizer, texts, spec.max_tokens)
    widths = np.array([bucket_width(len(row)) for row in ids])
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    for width in np.unique(widths):
        members = np.flatnonzero(widths == width)
        tokens, mask = left_padded([ids[i] for i in members], int(width), pad_id)
        for start in range(0, len(members), batch_size):
            rows = np.minimum(np.arange(start, start + batch_size), len(members) - 1)
            feats = pooled_states(model.params, jnp.asarray(tokens[rows]), jnp.asarray(mask[rows]),
                                  config=model.config, layers=tuple(spec.layers))
            take = min(batch_size, len(members) - start)
            out[members[start:start + take]] = np.asarray(feats)[:take]
    return out
