"""Compiled generation with interventions at every step (design.md §5, method.md §2.4 and §6).

One jitted function runs the prompt prefill and then a `lax.while_loop` of single-token decode steps
over a static-shape KV cache; the loop exits as soon as every row has emitted an end-of-sequence id or
`max_new_tokens` tokens exist. The intervention is an argument of every forward call, and its
position selectors (defined relative to t*, the last prompt token) say where it acts:

    "last"       t* only (during prefill)
    "from_last"  t* and every generated token (P_last, the paper's steering)
    "all"        every real position, prompt and generated (P_all, the paper's attention modulation)

Per-row interventions (arrays [L, B, ...]) give each batch row its own edit at no extra cost.
Decoding follows Hugging Face `generate` exactly (see emojax.generation.logits_processing).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh
from tqdm.auto import tqdm

from emojax import parallel
from emojax.generation import chat
from emojax.generation.decode_step import decode_step, decode_weights
from emojax.model.config import ModelConfig
from emojax.generation.logits_processing import (DecodingSettings, choose_tokens, mark_seen, process_logits,
                             seen_tokens)
from emojax.model.forward import check_token_ids, forward
from emojax.model.interventions import SHARED_RANK, Intervention, check_fits
from emojax.model.kv_cache import KVCache
from emojax.model.params import cast_params
from emojax.runs.progress import interactive

Array = Any
PAD = -1  # fills `tokens` after a row's end-of-sequence id

_MASK_FIELDS = ("resid_mask", "neuron_mask", "head_mask")


@struct.dataclass
class GeneratedTokens:
    """tokens [B, N] new ids, PAD (-1) after the end; lengths [B] ids before the padding (an emitted
    end-of-sequence id included); finished [B] whether the row emitted an end-of-sequence id;
    nonfinite [B] whether any logit the row's ids were chosen from was nan or inf (its ids are then
    meaningless: greedy decoding of nan logits picks id 0)."""

    tokens: Array
    lengths: Array
    finished: Array
    nonfinite: Array


@dataclasses.dataclass(frozen=True)
class Generation:
    """Result of `generate`, as numpy arrays on the host, one row per prompt.

    tokens          [B, max_new_tokens] int32 new ids, -1 after the end-of-sequence id (which is kept)
    texts           decoded replies, special tokens skipped, whitespace stripped (None without tokenizer)
    lengths         [B] number of new ids before the -1 padding
    prompt_lengths  [B] real (non-padding) prompt tokens, T_p
    finished        [B] the row stopped on an end-of-sequence id rather than on max_new_tokens
    nonfinite       [B] the row's logits were nan or inf at some step, so its reply means nothing
    """

    tokens: np.ndarray
    texts: list[str] | None
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    finished: np.ndarray
    nonfinite: np.ndarray


class _LoopState(NamedTuple):
    step: Array        # new tokens emitted so far
    buffer: Array      # [B, T + N] prompt then generated ids (PAD where not written)
    seen: Array        # [B, V] ids present in the sequence (for the repetition penalty)
    done: Array        # [B]
    nonfinite: Array   # [B] a nan or inf logit was seen
    cache: KVCache


def generate_tokens(params: dict[str, Any], tokens: Array, mask: Array, *, config: ModelConfig,
                    max_new_tokens: int, iv: Intervention | None = None,
                    repetition_penalty: float | Array = 1.0, no_repeat_ngram_size: int = 0,
                    min_new_tokens: int | Array = 0, temperature: float = 0.0, top_p: float = 1.0,
                    keys: Array | None = None, unroll: int = 1, low_memory: bool = False) -> GeneratedTokens:
    """Generate up to `max_new_tokens` ids for a left-padded prompt batch (tokens, mask: [B, T]).

    Compiled once per shape and structure: `repetition_penalty` and `min_new_tokens` are traced (they
    may vary, even be traced values, without recompiling); the other settings are Python numbers.
    `keys` [B, 2] are per-row PRNG keys for sampling (default: rows of PRNGKey(0)); greedy decoding
    (temperature 0) ignores them. A row stops at any of `config.eos_token_ids`. Jittable and vmappable.
    `unroll` is the prefill's layer-scan unroll; decode steps always run their layers unrolled.
    low_memory: decode with `forward` on the model's own stacked weights instead of the decode step's
    transposed per-layer copy (`decode_step.decode_weights`): no second copy of the weights, for
    models whose weights fill more than half the memory, at the price of slower steps. Same tokens.
    """
    if max_new_tokens < 1:
        raise ValueError(f"generate_tokens: max_new_tokens={max_new_tokens}; must be >= 1")
    DecodingSettings(repetition_penalty, no_repeat_ngram_size, min_new_tokens, temperature, top_p)  # checks
    if keys is None:
        keys = jax.random.split(jax.random.PRNGKey(0), tokens.shape[0])
    return _generate(params, tokens, mask, iv, keys, repetition_penalty, min_new_tokens, config=config,
                     max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size,
                     temperature=temperature, top_p=top_p, unroll=unroll, low_memory=low_memory)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "no_repeat_ngram_size", "temperature",
                                             "top_p", "unroll", "low_memory"))
def _generate(params: dict[str, Any], tokens: Array, mask: Array, iv: Intervention | None, keys: Array,
              repetition_penalty: Array, min_new_tokens: Array, *, config: ModelConfig, max_new_tokens: int,
              no_repeat_ngram_size: int, temperature: float, top_p: float, unroll: int,
              low_memory: bool) -> GeneratedTokens:
    settings = DecodingSettings(repetition_penalty, no_repeat_ngram_size, min_new_tokens, temperature, top_p)
    b, t = tokens.shape
    n = max_new_tokens
    eos = jnp.asarray(config.eos_token_ids, jnp.int32)
    mask = jnp.asarray(mask, bool)
    buffer = jnp.concatenate([jnp.asarray(tokens, jnp.int32), jnp.full((b, n), PAD, jnp.int32)], axis=1)
    valid = jnp.concatenate([mask, jnp.ones((b, n), bool)], axis=1)

    def emit(state: _LoopState, logits: Array) -> _LoopState:
        """Choose the next id of every unfinished row from the last position's logits [B, V]."""
        length = t + state.step
        # One reduction over the logits the step computed anyway; no host sync.
        nonfinite = state.nonfinite | ~(jnp.all(jnp.isfinite(logits), axis=-1) | state.done)
        logits = process_logits(logits, settings=settings, buffer=state.buffer, valid=valid,
                                length=length, seen=state.seen, n_generated=state.step,
                                eos_token_ids=config.eos_token_ids)
        new = jnp.where(state.done, PAD, choose_tokens(logits, settings, keys, state.step))
        return _LoopState(
            step=state.step + 1,
            buffer=jax.lax.dynamic_update_slice(state.buffer, new[:, None], (0, length)),
            seen=mark_seen(state.seen, new),
            done=state.done | jnp.isin(new, eos),
            nonfinite=nonfinite,
            cache=state.cache)

    cache = KVCache.empty(config, b, t + n, params["embed"].dtype)
    prefill = forward(params, tokens, config=config, mask=mask, cache=cache, iv=iv, logits="last",
                      unroll=unroll)
    seen = seen_tokens(buffer, valid, config.vocab_size)
    start = _LoopState(jnp.zeros((), jnp.int32), buffer, seen, jnp.zeros((b,), bool), jnp.zeros((b,), bool),
                       prefill.cache if low_memory else prefill.cache.per_layer())
    state = emit(start, prefill.logits[:, -1])

    def unfinished(state: _LoopState) -> Array:
        return (state.step < n) & ~jnp.all(state.done)

    if low_memory:
        def next_logits(token: Array, cache: KVCache) -> tuple[Array, KVCache]:
            out = forward(params, token[:, None], config=config, cache=cache, iv=iv, logits="last", unroll=unroll)
            return out.logits[:, -1], out.cache
    else:
        weights = decode_weights(params, config)  # transposed once, outside the loop

        def next_logits(token: Array, cache: KVCache) -> tuple[Array, KVCache]:
            return decode_step(weights, token, cache, config=config, iv=iv)

    def step(state: _LoopState) -> _LoopState:
        last = jax.lax.dynamic_slice_in_dim(state.buffer, t + state.step - 1, 1, axis=1)[:, 0]
        # Finished rows keep running on a dummy id; their outputs are discarded.
        logits, cache = next_logits(jnp.maximum(last, 0), state.cache)
        return emit(state._replace(cache=cache), logits)

    state = jax.lax.while_loop(unfinished, step, state)
    new_tokens = state.buffer[:, t:]
    return GeneratedTokens(tokens=new_tokens, lengths=jnp.sum(new_tokens != PAD, axis=1),
                           finished=jnp.any(jnp.isin(new_tokens, eos), axis=1), nonfinite=state.nonfinite)


def generate(model: Any, prompts: Sequence[chat.Messages] | tuple[Array, Array], *,
             max_new_tokens: int, iv: Intervention | None = None, repetition_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0, min_new_tokens: int = 0, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, batch_size: int | None = None,
             dtype: Any = None, mesh: Mesh | None = None, low_memory: bool = False) -> Generation:
    """Generate replies for chat prompts with an optional intervention at every step.

    model: has .params, .config, .tokenizer (as returned by `emojax.load_model`).
    prompts: a list of conversations (lists of {"role", "content"} messages), rendered with the chat
      template, or a pre-tokenised left-padded (tokens [B, T], mask [B, T]) batch.
    iv: shared by all rows, or per row with the batch axis after the layer axis ([L, B, ...]).
    batch_size: prompts per compiled call (default all); every chunk has the same shape, so one
      compilation serves the whole call. dtype: compute dtype of weights, cache and edits.
    Sampling (temperature > 0) uses a key per prompt derived from `seed` and the prompt's index, so
    results do not depend on batch_size.
    mesh: weights placed by their logical axes, prompt rows (and per-row edits) split over 'data';
      batch_size is rounded up to a multiple of the row shards. Same tokens as without a mesh.
    Memory: while it runs, a call holds the decode step's transposed per-layer copy of the weights
    (`decode_step.decode_weights`) beside the model's own, so plan for twice the weight memory;
    `low_memory=True` decodes without that copy (slower steps, same tokens).
    """
    tokens, mask = _prompt_batch(model, prompts)
    check_token_ids(tokens, model.config.vocab_size, "generate")
    n_prompts = tokens.shape[0]
    params = model.params if dtype is None else cast_params(model.params, dtype)
    compute_dtype = params["embed"].dtype
    if iv is not None:
        _check_rows(iv, n_prompts)
        check_fits(iv, model.config, n_prompts)
        _check_finite(iv)
        iv = jax.tree_util.tree_map(
            lambda a: a.astype(compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, iv)
    size = n_prompts if batch_size is None else max(1, min(batch_size, n_prompts))
    shards = parallel.row_multiple(mesh)
    size = -(-size // shards) * shards  # extra rows repeat the last prompt and are dropped below
    if mesh is not None:
        params = parallel.shard_params(params, mesh, model.config)
    base_key = jax.random.PRNGKey(seed)
    row_keys = np.asarray(jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jnp.arange(n_prompts)))
    starts = range(0, n_prompts, size)
    quiet = len(starts) == 1 or not interactive()
    pieces = []
    for start in tqdm(starts, desc="generate", unit="batch", disable=quiet):
        # The last chunk is filled up by repeating its final prompt, so its shape matches the others.
        rows = np.minimum(np.arange(start, start + size), n_prompts - 1)
        chunk_tokens, chunk_mask, chunk_keys = tokens[rows], mask[rows], row_keys[rows]
        chunk_iv = None if iv is None else _take_rows(iv, rows)
        if mesh is not None:
            chunk_tokens, chunk_mask, chunk_keys = parallel.place_rows((chunk_tokens, chunk_mask, chunk_keys), mesh)
            chunk_iv = None if chunk_iv is None else _place_iv_rows(chunk_iv, mesh)
        result = generate_tokens(
            params, chunk_tokens, chunk_mask, config=model.config, max_new_tokens=max_new_tokens,
            iv=chunk_iv, repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
            temperature=temperature, top_p=top_p, keys=chunk_keys, low_memory=low_memory)
        real = min(size, n_prompts - start)
        pieces.append(jax.tree_util.tree_map(lambda a: a[:real], parallel.to_host(result)))
    out = jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *pieces)
    tokenizer = getattr(model, "tokenizer", None)
    return Generation(
        tokens=out.tokens,
        texts=None if tokenizer is None else chat.decode_replies(tokenizer, out.tokens),
        lengths=out.lengths,
        prompt_lengths=mask.sum(axis=1).astype(np.int32),
        finished=out.finished,
        nonfinite=out.nonfinite)


def _prompt_batch(model: Any, prompts: Any) -> tuple[np.ndarray, np.ndarray]:
    if not len(prompts):
        raise ValueError("generate: no prompts given")
    if isinstance(prompts, tuple) and len(prompts) == 2 and not chat.is_conversation(prompts[0]):
        tokens, mask = np.asarray(prompts[0], np.int32), np.asarray(prompts[1], bool)
        if tokens.ndim != 2 or tokens.shape != mask.shape:
            raise ValueError(f"generate: pre-tokenised prompts need tokens and mask of one shape [B, T]; "
                             f"got {tokens.shape} and {mask.shape}")
        if not mask[:, -1].all():
            raise ValueError("generate: pre-tokenised prompts must be left-padded (mask[:, -1] all true)")
        return tokens, mask
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("generate: chat prompts need model.tokenizer; pass a (tokens, mask) batch instead")
    return chat.encode_chats(tokenizer, prompts)


def _per_row_fields(iv: Intervention) -> dict[str, int]:
    """Fields that carry a batch axis, mapped to that axis."""
    fields = {name: 1 for name, rank in SHARED_RANK.items() if jnp.ndim(getattr(iv, name)) == rank + 1}
    fields.update({name: 0 for name in _MASK_FIELDS
                   if getattr(iv, name) is not None and jnp.ndim(getattr(iv, name)) == 2})
    return fields


def _check_finite(iv: Intervention) -> None:
    """A nan or inf edit makes every logit nan, and greedy decoding then emits empty replies that
    look like verdicts; one check per call (a single transfer), none per step."""
    fields = {name: getattr(iv, name) for name in SHARED_RANK}
    finite = jax.device_get({name: jnp.all(jnp.isfinite(value)) for name, value in fields.items()})
    bad = [name for name, ok in finite.items() if not ok]
    if bad:
        raise ValueError(f"generate: iv holds nan or inf in Intervention.{', '.join(bad)}")


def _check_rows(iv: Intervention, n_prompts: int) -> None:
    for name, axis in _per_row_fields(iv).items():
        rows = jnp.shape(getattr(iv, name))[axis]
        if rows != n_prompts:
            raise ValueError(f"generate: per-row intervention field {name!r} has {rows} rows on axis "
                             f"{axis}, but there are {n_prompts} prompts")


def _place_iv_rows(iv: Intervention, mesh: Mesh) -> Intervention:
    """Per-row fields split over the row shards like the prompts; shared fields are left to jit."""
    return iv.replace(**{name: parallel.place_rows(getattr(iv, name), mesh, axis=axis)
                         for name, axis in _per_row_fields(iv).items()})


def _take_rows(iv: Intervention, rows: np.ndarray) -> Intervention:
    return iv.replace(**{name: jnp.take(getattr(iv, name), rows, axis=axis)
                         for name, axis in _per_row_fields(iv).items()})
