"""Perplexity of replies under the unmodified model given their own prompts: one jitted forward, no generation.

Each row is the chat-rendered prompt followed by the reply's tokens, left-padded so that every reply ends
in the last column. One forward (`logits="none"`, the post-norm `final` state at every position) gives
the states that predict the reply; the LM head is applied to the last `reply_width` of them only, so the
pass costs one plain prefill of the same tokens plus the head over the reply columns. Those logits are
formed a few columns at a time (at most LOGITS_BUDGET bytes of them at once) and reduced at once to each
column's negative log-likelihood, so a 262k vocabulary (Gemma 3) never holds [B, R, V] logits.

`alone_batch` builds the same rows from the replies alone (no prompt): the fluency rule does not use them;
`experiments/judge_training/fluency_context.py` measures what the rule loses on them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.method.prompts import DEFAULT_DATE_STRING, Messages, tokenize_prompts
from emojax.model import block
from emojax.model.forward import forward, lm_head
from emojax.model.taps import TapSpec

FINAL_STATES = TapSpec(points=("final",), at="all")
PAD_MULTIPLE = 16
LOGITS_BUDGET = 1 << 28  # bytes of float32 logits alive at once in `reply_nll` (256 MiB)


@dataclasses.dataclass(frozen=True)
class ReplyBatch:
    """Prompt + reply rows, left-padded to one width; row i's reply fills its last `reply_lengths[i]` columns.

    tokens [N, W] int32, mask [N, W] bool (real tokens), reply_lengths [N] int32, reply_width R <= W - 1:
    the reply columns every row's reply fits in.
    """

    tokens: np.ndarray
    mask: np.ndarray
    reply_lengths: np.ndarray
    reply_width: int

    @property
    def reply_mask(self) -> np.ndarray:
        """[N, R] True on the reply tokens among the last R columns."""
        columns = np.arange(self.reply_width)[None, :]
        return columns >= self.reply_width - self.reply_lengths[:, None]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def reply_batch(tokenizer: Any, prompts: Sequence[Messages], replies: Sequence[str], *,
                date_string: str = DEFAULT_DATE_STRING, pad_multiple: int = PAD_MULTIPLE) -> ReplyBatch:
    """Tokenise prompts (emojax.method.prompts: chat template, generation prompt) and replies (no special tokens)."""
    if len(prompts) != len(replies):
        raise ValueError(f"reply_batch: {len(prompts)} prompts for {len(replies)} replies")
    prompt_batch = tokenize_prompts(tokenizer, prompts, date_string=date_string)
    prompt_rows = [row[keep] for row, keep in zip(prompt_batch.tokens, prompt_batch.mask)]
    reply_rows = [list(ids) for ids in tokenizer(list(replies), add_special_tokens=False)["input_ids"]]
    reply_lengths = np.array([len(ids) for ids in reply_rows], np.int32)
    reply_width = _round_up(max(int(reply_lengths.max()), 1), pad_multiple)
    width = _round_up(max(len(p) + len(r) for p, r in zip(prompt_rows, reply_rows)), pad_multiple)
    width = max(width, _round_up(reply_width + 1, pad_multiple))  # a state precedes every reply column
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = np.full((len(replies), width), pad_id, np.int32)
    mask = np.zeros((len(replies), width), bool)
    for i, (prompt, reply) in enumerate(zip(prompt_rows, reply_rows)):
        row = np.concatenate([prompt, np.asarray(reply, np.int32)])
        tokens[i, width - len(row):] = row
        mask[i, width - len(row):] = True
    return ReplyBatch(tokens, mask, reply_lengths, reply_width)


@functools.partial(jax.jit, static_argnames=("config", "reply_width", "logits_budget"))
def reply_nll(params: dict[str, Any], tokens: jax.Array, mask: jax.Array, reply_mask: jax.Array, *,
              config: Any, reply_width: int, logits_budget: int = LOGITS_BUDGET) -> jax.Array:
    """[B] summed negative log-likelihood of the reply tokens (the `reply_mask` [B, R] of the last R columns).
    At most `logits_budget` bytes of float32 logits exist at once (see `column_chunk`)."""
    out = forward(params, tokens, config=config, mask=mask, taps=FINAL_STATES, logits="none")
    states = out.taps["final"][:, -reply_width - 1:-1]  # the state before each reply column predicts it
    targets = tokens[:, -reply_width:]
    head = lm_head(params)

    def column_nll(states: jax.Array, targets: jax.Array) -> jax.Array:
        logits = block.logits(states, head, config)  # [B, c, V], the final soft-cap included
        chosen = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - chosen

    b = tokens.shape[0]
    columns = column_chunk(b, reply_width, config.vocab_size, logits_budget)
    if columns >= reply_width:
        token_nll = column_nll(states, targets)
    else:  # a few columns at a time: [n, B, c, D] chunks, the last one padded by repeating a column
        n = -(-reply_width // columns)
        index = jnp.minimum(jnp.arange(n * columns), reply_width - 1).reshape(n, columns)
        parts = jax.lax.map(lambda idx: column_nll(states[:, idx], targets[:, idx]), index)  # [n, B, c]
        token_nll = jnp.moveaxis(parts, 0, 1).reshape(b, n * columns)[:, :reply_width]
    return jnp.sum(jnp.where(reply_mask, token_nll, 0.0), axis=1)


def column_chunk(batch: int, reply_width: int, vocab_size: int, budget: int = LOGITS_BUDGET) -> int:
    """Reply columns whose float32 logits fit in `budget` bytes (at least one, at most all)."""
    return int(min(reply_width, max(1, budget // (4 * batch * vocab_size))))


def batch_perplexities(params: dict[str, Any], config: Any, batch: ReplyBatch, rows: np.ndarray) -> np.ndarray:
    """Perplexity of the replies of `rows` (float64 [len(rows)]; NaN for an empty reply)."""
    if int(batch.tokens.max(initial=0)) >= config.vocab_size:
        raise ValueError(f"perplexity: token id {int(batch.tokens.max())} is outside the model's vocabulary of "
                         f"{config.vocab_size}; the tokenizer does not belong to this model")
    nll = reply_nll(params, jnp.asarray(batch.tokens[rows]), jnp.asarray(batch.mask[rows]),
                    jnp.asarray(batch.reply_mask[rows]), config=config, reply_width=batch.reply_width)
    lengths = batch.reply_lengths[rows].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, np.exp(np.asarray(nll, np.float64) / lengths), np.nan)


def perplexities(model: Any, prompts: Sequence[Messages], replies: Sequence[str], *, batch_size: int,
                 date_string: str = DEFAULT_DATE_STRING) -> np.ndarray:
    """Perplexity of each reply given its prompt, in batches of one shape (the last one filled up)."""
    batch = reply_batch(model.tokenizer, prompts, replies, date_string=date_string)
    return batched_perplexities(model, batch, batch_size=batch_size)


def alone_batch(tokenizer: Any, replies: Sequence[str], *, pad_multiple: int = PAD_MULTIPLE) -> ReplyBatch:
    """Replies read alone (no prompt, no special tokens): the first token conditions the rest, so a
    reply's perplexity is over its tokens after the first (NaN for a reply of fewer than two tokens)."""
    rows = [np.asarray(ids, np.int32) for ids in tokenizer(list(replies), add_special_tokens=False)["input_ids"]]
    lengths = np.array([len(row) for row in rows], np.int32)
    width = _round_up(max(int(lengths.max(initial=0)), 2), pad_multiple)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):] = row
        mask[i, width - len(row):] = True
    return ReplyBatch(tokens, mask, np.maximum(lengths - 1, 0).astype(np.int32), width - 1)


def batched_perplexities(model: Any, batch: ReplyBatch, *, batch_size: int) -> np.ndarray:
    """Perplexity of every row of `batch`, `batch_size` rows per forward (the last forward filled up)."""
    n = len(batch.reply_lengths)
    size = max(1, min(batch_size, n))
    pieces = []
    for start in range(0, n, size):
        rows = np.minimum(np.arange(start, start + size), n - 1)
        pieces.append(batch_perplexities(model.params, model.config, batch, rows)[: min(size, n - start)])
    return np.concatenate(pieces) if pieces else np.zeros(0)
