"""Logits processors for compiled decoding: pure jnp functions on a static-shape token buffer.

They reproduce Hugging Face `generate` exactly (method.md §6), applied in the order its
`_get_logits_processor` builds them: repetition penalty, no-repeat n-gram, min-new-tokens, then, when
sampling, temperature and top-p.

The token buffer is [B, S]: every row holds its left-padded prompt followed by the tokens generated so
far; `valid` [B, S] marks real (non-padding) slots and `length` (a scalar shared by all rows) counts
the filled slots. Padding never counts as part of a sequence (§12 T13, T16); the prompt always does.
Each processor costs O(B*V) or O(B*S) per step, so a decode step stays matmul-bound.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

Array = Any


@dataclasses.dataclass(frozen=True)
class DecodingSettings:
    """How the next token is chosen.

    `repetition_penalty` and `min_new_tokens` may be traced values, so settings that differ only in
    them share one compilation; the others decide the program's structure and are Python numbers.
    A penalty of 1 and a minimum of 0 leave the logits exactly unchanged. temperature 0 means greedy
    decoding; temperature > 0 samples, after top-p filtering when top_p < 1.
    """

    repetition_penalty: float | Array = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int | Array = 0
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        checks = {"repetition_penalty": (lambda v: v > 0, "> 0"),
                  "no_repeat_ngram_size": (lambda v: v >= 0, ">= 0"),
                  "min_new_tokens": (lambda v: v >= 0, ">= 0"),
                  "temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)"),
                  "top_p": (lambda v: 0 < v <= 1, "in (0, 1]")}
        for name, (ok, rule) in checks.items():
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not ok(value):  # traced values are checked by the caller
                raise ValueError(f"DecodingSettings.{name}={value}; must be {rule}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


def seen_tokens(buffer: Array, valid: Array, vocab_size: int) -> Array:
    """[B, V] bool: which token ids occur in the valid slots of each row."""
    b = buffer.shape[0]
    # Padding and out-of-vocabulary ids land in a spare column that is dropped.
    ids = jnp.where(valid & (buffer >= 0) & (buffer < vocab_size), buffer, vocab_size)
    seen = jnp.zeros((b, vocab_size + 1), bool).at[jnp.arange(b)[:, None], ids].set(True)
    return seen[:, :vocab_size]


def mark_seen(seen: Array, tokens: Array) -> Array:
    """Add one token per row ([B]; negative ids are ignored) to the seen set."""
    b, vocab_size = seen.shape
    ids = jnp.where(tokens >= 0, tokens, vocab_size)
    return seen.at[jnp.arange(b), ids].set(True, mode="drop")


def exact_divide(x: Array, divisor: float | Array) -> Array:
    """x / divisor with IEEE division, as PyTorch computes it. XLA rewrites a division by a broadcast
    scalar as a multiplication by its reciprocal, which can differ in the last bit; an opaque
    full-shape divisor keeps the true division."""
    return x / jax.lax.optimization_barrier(jnp.full(x.shape, divisor, x.dtype))


def apply_repetition_penalty(logits: Array, seen: Array, penalty: float | Array) -> Array:
    """Every seen id: z -> z * p if z < 0, else z / p (applied once per distinct id)."""
    penalised = jnp.where(logits < 0, logits * penalty, exact_divide(logits, penalty))
    return jnp.where(seen, penalised, logits)


def banned_ngram_tokens(buffer: Array, valid: Array, length: Array, ngram_size: int,
                        vocab_size: int) -> Array:
    """[B, V] bool: tokens that would complete an n-gram already present in the row.

    Every window of n valid slots that ends before `length` and whose first n-1 tokens equal the row's
    last n-1 tokens bans its last token. Vectorised over all windows of the static buffer.
    """
    b, s = buffer.shape
    n = ngram_size
    count = s - n + 1  # windows of the static buffer
    if count <= 0:
        return jnp.zeros((b, vocab_size), bool)
    prefix = jax.lax.dynamic_slice_in_dim(buffer, length - (n - 1), n - 1, axis=1)
    prefix_valid = jax.lax.dynamic_slice_in_dim(valid, length - (n - 1), n - 1, axis=1).all(axis=1)
    starts = jnp.arange(count)
    # Left padding makes valid slots a suffix, so a window is all-valid iff its first slot is.
    match = valid[:, :count] & (starts + n <= length)[None] & prefix_valid[:, None]
    for i in range(n - 1):
        match &= buffer[:, i:i + count] == prefix[:, i:i + 1]
    last = buffer[:, n - 1:n - 1 + count]
    ids = jnp.where(match & (last >= 0) & (last < vocab_size), last, vocab_size)
    banned = jnp.zeros((b, vocab_size + 1), bool).at[jnp.arange(b)[:, None], ids].set(True)
    return banned[:, :vocab_size]


def apply_no_repeat_ngram(logits: Array, buffer: Array, valid: Array, length: Array,
                          ngram_size: int) -> Array:
    banned = banned_ngram_tokens(buffer, valid, length, ngram_size, logits.shape[-1])
    return jnp.where(banned, -jnp.inf, logits)


def apply_min_new_tokens(logits: Array, n_generated: Array, min_new_tokens: int | Array,
                         eos_token_ids: Sequence[int]) -> Array:
    """Set every end-of-sequence logit to -inf while fewer than `min_new_tokens` have been generated."""
    is_eos = jnp.isin(jnp.arange(logits.shape[-1]), jnp.asarray(eos_token_ids, jnp.int32))
    return jnp.where(is_eos & (n_generated < min_new_tokens), -jnp.inf, logits)


def apply_top_p(logits: Array, top_p: float, min_tokens_to_keep: int = 1) -> Array:
    """Keep the most probable tokens until their mass reaches top_p (Hugging Face's tie handling:
    tokens are dropped while the cumulative mass of the less likely ones stays <= 1 - top_p)."""
    order = jnp.argsort(logits, axis=-1)  # ascending
    ascending = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted = drop_sorted.at[..., -min_tokens_to_keep:].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    drop = jnp.zeros_like(drop_sorted).at[rows, order].set(drop_sorted)
    return jnp.where(drop, -jnp.inf, logits)


def process_logits(logits: Array, *, settings: DecodingSettings, buffer: Array, valid: Array,
                   length: Array, seen: Array, n_generated: Array,
                   eos_token_ids: Sequence[int]) -> Array:
    """All processors in Hugging Face's order. logits [B, V] float32 for the next token."""
    logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.no_repeat_ngram_size > 0:
        logits = apply_no_repeat_ngram(logits, buffer, valid, length, settings.no_repeat_ngram_size)
    if eos_token_ids:
        logits = apply_min_new_tokens(logits, n_generated, settings.min_new_tokens, eos_token_ids)
    if settings.sampling:
        if settings.temperature != 1.0:
            logits = exact_divide(logits, settings.temperature)
        if settings.top_p < 1.0:
            logits = apply_top_p(logits, settings.top_p)
    return logits


def choose_tokens(logits: Array, settings: DecodingSettings, row_keys: Array, step: Array) -> Array:
    """Greedy argmax, or one categorical sample per row from its own key folded with the step."""
    if not settings.sampling:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
    return jax.vmap(jax.random.categorical)(step_keys, logits).astype(jnp.int32)
