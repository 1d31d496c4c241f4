"""Generation: Hugging Face `generate` parity (tiny models and the default model), interventions at
every step on their position sets, per-row edits, stopping, padding, sampling and input checks."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import left_padded, random_prompts, torch_hooks
from emojax import generate
from emojax.generation.loop import generate_tokens
from emojax.model.config import ModelConfig
from emojax.model.forward import forward
from emojax.model.interventions import Intervention
from emojax.model.params import param_shapes
from hf_fixtures import tiny_tokenizer

TINY = "llama_gqa_tied"
LENGTHS = [7, 3, 11, 5]
N = 8  # new tokens of every tiny run
PAPER_DECODING = dict(repetition_penalty=1.1, no_repeat_ngram_size=3, min_new_tokens=10)  # method.md §6


class Model(NamedTuple):
    params: Any
    config: ModelConfig
    tokenizer: Any = None


def new_ids(row: np.ndarray) -> list[int]:
    return [int(t) for t in row if t >= 0]


def hf_generate(hf: Any, prompt: np.ndarray, max_new_tokens: int, **settings: Any) -> list[int]:
    """Greedy HF `generate` on one unpadded prompt; the new ids (an end-of-sequence id included)."""
    ids = torch.as_tensor(np.asarray(prompt)[None], dtype=torch.long)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                          do_sample=False, **settings)
    return out[0, ids.shape[1]:].tolist()


def tiny_batch(tiny_model, seed: int = 0) -> tuple[Model, Any, list[np.ndarray], np.ndarray, np.ndarray]:
    m = tiny_model(TINY)
    prompts = random_prompts(LENGTHS, m.config.vocab_size, seed=seed)
    tokens, mask = left_padded(prompts, m.config.vocab_size)
    return Model(m.params, m.config), m.hf, prompts, tokens, mask


# --- Hugging Face parity on a tiny model ---------------------------------------------------------------
# Every tiny run has the same prompt shape and length, so runs share compilations across tests.

@pytest.mark.parametrize("settings", [{}, PAPER_DECODING], ids=["plain", "paper"])
def test_tiny_left_padded_batch_matches_hf_generate_on_each_prompt_alone(tiny_model, settings):
    model, hf, prompts, tokens, mask = tiny_batch(tiny_model)
    out = generate(model, (tokens, mask), max_new_tokens=N, **settings)
    for row, prompt in enumerate(prompts):
        assert new_ids(out.tokens[row]) == hf_generate(hf, prompt, N, **settings), f"row {row}"
    np.testing.assert_array_equal(out.prompt_lengths, LENGTHS)


def test_tiny_stops_at_any_eos_pads_after_it_and_respects_min_new_tokens(tiny_model):
    model, hf, prompts, tokens, mask = tiny_batch(tiny_model)
    varied = dict(max_new_tokens=N, repetition_penalty=1.1, no_repeat_ngram_size=3)
    free = generate(model, (tokens, mask), **varied)
    # Make the first new token that row 0 emits after step 1 an end-of-sequence id (beside the config's).
    first = free.tokens[0]
    step = next(i for i in range(2, N) if first[i] not in first[:i])
    eos = (int(first[step]),) + model.config.eos_token_ids
    stopping = model._replace(config=model.config.replace(eos_token_ids=eos))
    hf_settings = dict(repetition_penalty=1.1, no_repeat_ngram_size=3, eos_token_id=list(eos), pad_token_id=0)
    out = generate(stopping, (tokens, mask), **varied)
    np.testing.assert_array_equal(out.tokens[0], list(first[:step + 1]) + [-1] * (N - 1 - step))
    assert out.lengths[0] == step + 1 and out.finished[0]
    for row, prompt in enumerate(prompts):
        ids = new_ids(out.tokens[row])
        assert ids == hf_generate(hf, prompt, N, **hf_settings), f"row {row}"
        assert out.lengths[row] == len(ids) and out.finished[row] == (ids[-1] in eos)
    late = generate(stopping, (tokens, mask), min_new_tokens=step + 2, **varied)
    assert not np.isin(late.tokens[:, :step + 2], eos).any()
    assert new_ids(late.tokens[0]) == hf_generate(hf, prompts[0], N, min_new_tokens=step + 2, **hf_settings)


# --- interventions on their position sets, against a full recompute without cache --------------------

def reference_greedy(model: Model, tokens: np.ndarray, mask: np.ndarray, iv: Intervention, steps: int) -> np.ndarray:
    """Greedy ids from a full forward over prompt + generated ids at every step (no KV cache). The
    sequence is right-padded to its final width, so one compiled shape serves every step."""
    b, t = tokens.shape
    seq = np.concatenate([tokens, np.zeros((b, steps), tokens.dtype)], axis=1)
    valid = np.concatenate([mask, np.zeros((b, steps), bool)], axis=1)
    t_star = mask.sum(axis=1) - 1
    run = jax.jit(lambda s, v: forward(model.params, s, config=model.config, mask=v, iv=iv,
                                       last_pos=jnp.asarray(t_star)).logits)
    for step in range(steps):
        logits = np.asarray(run(seq, valid))[:, t + step - 1]
        seq[:, t + step] = logits.argmax(axis=-1)
        valid[:, t + step] = True
    return seq[:, t:]


def per_row_edits(config: ModelConfig, rows: int, seed: int = 5) -> Intervention:
    """Different residual, neuron and head edits for every row (arrays [L, B, ...])."""
    rng = np.random.default_rng(seed)
    L, D, F, H, Dh = config.n_layers, config.d_model, config.d_ff, config.n_heads, config.head_dim
    fields = dict(
        resid_add=rng.normal(0, 1.0, (L, rows, 2, D)), resid_add_rms=rng.normal(0, 0.5, (L, rows, 2, D)),
        neuron_scale=rng.uniform(0, 2, (L, rows, F)), neuron_add=rng.normal(0, 0.5, (L, rows, F)),
        head_scale=rng.uniform(0, 2, (L, rows, H)), head_add=rng.normal(0, 0.5, (L, rows, H, Dh)))
    return Intervention(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


def mixed_selectors(iv: Intervention, width: int) -> Intervention:
    return iv.with_where(resid="last", neuron="from_last", head="all")


def explicit_masks(iv: Intervention, width: int) -> Intervention:
    rng = np.random.default_rng(6)
    masks = {f"{g}_mask": jnp.asarray(rng.random((iv.resid_add.shape[1], width)) < 0.5)
             for g in ("resid", "neuron", "head")}
    return iv.replace(**masks, resid_where="mask", neuron_where="mask", head_where="mask")


@pytest.mark.parametrize("selectors", [mixed_selectors, explicit_masks], ids=["last-from_last-all", "masks"])
def test_edits_land_on_their_position_sets_during_prefill_and_decoding(tiny_model, selectors):
    """t* only, P_last, P_all and explicit masks, per row, as a full forward at every step places them."""
    model, _, _, tokens, mask = tiny_batch(tiny_model, seed=3)
    iv = selectors(per_row_edits(model.config, len(LENGTHS)), tokens.shape[1] + N)
    out = generate(model, (tokens, mask), max_new_tokens=N, iv=iv)
    np.testing.assert_array_equal(out.tokens, reference_greedy(model, tokens, mask, iv, N))
    plain = generate(model, (tokens, mask), max_new_tokens=N)
    assert not np.array_equal(out.tokens, plain.tokens)


def test_per_row_edits_equal_each_row_edited_alone_in_any_chunking(tiny_model):
    model, _, _, tokens, mask = tiny_batch(tiny_model, seed=4)
    iv = mixed_selectors(per_row_edits(model.config, len(LENGTHS)), 0)
    # Chunks of 3 rows: the last chunk repeats its final prompt (and that row's edits) to fill up.
    batched = generate(model, (tokens, mask), max_new_tokens=N, iv=iv, batch_size=3, **PAPER_DECODING)
    assert len({tuple(r) for r in batched.tokens}) == len(LENGTHS)
    for row in range(len(LENGTHS)):
        shared = jax.tree_util.tree_map(lambda a: a[:, row], iv)
        alone = generate(model, (tokens[row:row + 1], mask[row:row + 1]), max_new_tokens=N, iv=shared,
                         **PAPER_DECODING)
        np.testing.assert_array_equal(alone.tokens[0], batched.tokens[row])


@pytest.mark.parametrize("selectors", [mixed_selectors, explicit_masks], ids=["last-from_last-all", "masks"])
def test_low_memory_decoding_without_the_weight_copy_gives_the_same_tokens(tiny_model, selectors):
    """`low_memory` decodes with `forward` on the stacked weights: the tokens of the transposed-copy
    decode step, with per-row edits on every position set and the paper's logits processing."""
    model, _, _, tokens, mask = tiny_batch(tiny_model, seed=8)
    iv = selectors(per_row_edits(model.config, len(LENGTHS)), tokens.shape[1] + N)
    for edits in (None, iv):
        fast = generate(model, (tokens, mask), max_new_tokens=N, iv=edits, **PAPER_DECODING)
        lean = generate(model, (tokens, mask), max_new_tokens=N, iv=edits, low_memory=True, **PAPER_DECODING)
        np.testing.assert_array_equal(lean.tokens, fast.tokens)
        np.testing.assert_array_equal(lean.lengths, fast.lengths)


def test_generate_tokens_is_jittable_and_vmappable_over_interventions(tiny_model):
    model, _, _, tokens, mask = tiny_batch(tiny_model, seed=6)
    base = Intervention.identity(model.config, resid_where="from_last")
    direction = np.random.default_rng(0).normal(size=model.config.d_model)
    variants = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                      *[base.add_resid(1, 1, a * direction, rms_scaled=True) for a in (0.0, 4.0)])
    run = jax.jit(jax.vmap(lambda v: generate_tokens(model.params, tokens, mask, config=model.config,
                                                     max_new_tokens=N, iv=v).tokens))
    swept = np.asarray(run(variants))
    np.testing.assert_array_equal(swept[0], generate(model, (tokens, mask), max_new_tokens=N).tokens)
    assert not np.array_equal(swept[0], swept[1])


# --- sampling, chat prompts, dtypes, input checks -------------------------------------------------------

def test_sampling_is_seeded_per_prompt_and_independent_of_chunking(tiny_model):
    model, _, _, tokens, mask = tiny_batch(tiny_model, seed=7)
    kwargs = dict(max_new_tokens=N, temperature=1.5, top_p=0.95)
    a = generate(model, (tokens, mask), seed=11, **kwargs)
    b = generate(model, (tokens, mask), seed=11, batch_size=3, **kwargs)
    c = generate(model, (tokens, mask), seed=12, **kwargs)
    greedy = generate(model, (tokens, mask), max_new_tokens=N)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens) and not np.array_equal(a.tokens, greedy.tokens)


def tiny_chat_model() -> Model:
    tokenizer = tiny_tokenizer()
    config = ModelConfig(family="llama", vocab_size=len(tokenizer), d_model=32, n_layers=2, n_heads=4,
                         n_kv_heads=2, head_dim=8, d_ff=48, rms_eps=1e-5, rope_theta=10000.0,
                         tie_embeddings=False, qkv_bias=False, eos_token_ids=(tokenizer.eos_token_id,))
    rng = np.random.default_rng(0)  # numpy weights: nothing to compile per parameter shape
    params = jax.tree_util.tree_map(lambda shape: rng.normal(0, 0.3, shape).astype(np.float32),
                                    param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    return Model(params, config, tokenizer)


def test_chat_prompts_in_low_precision_with_an_intervention_decode_without_special_tokens():
    model = tiny_chat_model()
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
             for text in ("Hello there.", "A much longer question about the weather today?")]
    iv = Intervention.identity(model.config, resid_where="from_last").add_resid(0, 1, np.ones(32), rms_scaled=True)
    out = generate(model, chats, max_new_tokens=12, iv=iv, dtype=jnp.bfloat16)  # edits are cast to bfloat16
    for row, chat in enumerate(chats):
        rendered = model.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert out.prompt_lengths[row] == len(model.tokenizer(rendered)["input_ids"])
        expected = model.tokenizer.decode(new_ids(out.tokens[row]), skip_special_tokens=True).strip()
        assert out.texts[row] == expected
        assert "<|im_start|>" not in out.texts[row] and "<|im_end|>" not in out.texts[row]
    assert out.lengths.tolist() == [len(new_ids(r)) for r in out.tokens]


def test_bad_inputs_are_rejected_with_a_clear_message(tiny_model):
    model, _, _, tokens, mask = tiny_batch(tiny_model)
    wrong_rows = per_row_edits(model.config, 3)
    with pytest.raises(ValueError, match="'resid_add' has 3 rows"):
        generate(model, (tokens, mask), max_new_tokens=2, iv=wrong_rows)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, (tokens, mask[:, ::-1]), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, (tokens, mask), max_new_tokens=0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate(model, (tokens, mask), max_new_tokens=2, repetition_penalty=0.0)
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, [], max_new_tokens=2)
    with pytest.raises(ValueError, match="need model.tokenizer"):
        generate(model, [[{"role": "user", "content": "hi"}]], max_new_tokens=2)


# --- the default model against HF `generate` -------------------------------------------------------------

SYSTEM = "Keep the reply to at most two sentences."
USERS = [
    "I lost my keys this morning.\nThen I found them in the fridge.",
    "My friend cancelled our trip.",
    "The exam results came out today.\nI passed with top marks.",
    "A stranger helped me carry my groceries home.",
    "Tell me about the sea.",
    "My dog ran away.\nWe searched all night.",
    "I got a promotion at work!",
    "What is two plus two?",
]
CHATS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in USERS]
REAL_NEW = 24


def chat_ids(tokenizer: Any, chat: list[dict[str, str]]) -> np.ndarray:
    return np.asarray(tokenizer(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
                      ["input_ids"])


@pytest.fixture(scope="module")
def default_model_replies(default_model) -> dict[str, Any]:
    """emojax's greedy replies of the default model to CHATS, plain and with the paper's decoding."""
    return {name: generate(default_model, CHATS, max_new_tokens=REAL_NEW, **settings)
            for name, settings in (("plain", {}), ("paper", PAPER_DECODING))}


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize("name, settings", [("plain", {}), ("paper", PAPER_DECODING)], ids=["plain", "paper"])
def test_default_model_greedy_matches_hf_generate(hf_smollm2, default_model_replies, name, settings):
    hf, tokenizer = hf_smollm2
    out = default_model_replies[name]
    assert len(set(out.prompt_lengths)) > 1  # a mixed-length, left-padded batch
    for row, chat in enumerate(CHATS):
        expected = hf_generate(hf, chat_ids(tokenizer, chat), REAL_NEW, **settings)
        assert new_ids(out.tokens[row]) == expected, f"prompt {row}: {out.texts[row]!r}"
        assert out.texts[row] == tokenizer.decode(expected, skip_special_tokens=True).strip()


@pytest.mark.real_model
@pytest.mark.slow
def test_default_model_per_row_steering_matches_hf_last_position_hook(hf_smollm2, default_model,
                                                                     default_model_replies):
    """HF: a hook adds alpha * rms(h) * v to a layer's output at the last position of every forward call
    (t* in the prefill, then each new token). emojax: resid_add_rms at site 1 on "from_last"."""
    hf, tokenizer = hf_smollm2
    cfg = default_model.config
    layers, rows = (8, 12, 16), 4
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(rows, cfg.d_model)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    alphas = np.array([4.0, 6.0, 8.0, 5.0], np.float32)
    add = np.zeros((cfg.n_layers, rows, 2, cfg.d_model), np.float32)
    for layer in layers:
        add[layer, :, 1] = alphas[:, None] * vectors
    iv = Intervention.identity(cfg, resid_where="from_last").replace(resid_add_rms=jnp.asarray(add))
    out = generate(default_model, CHATS[:rows], max_new_tokens=REAL_NEW, iv=iv, **PAPER_DECODING)

    for row in range(rows):
        v = torch.from_numpy(vectors[row])

        def steer(module, args, output, alpha=float(alphas[row])):
            h = output[0] if isinstance(output, tuple) else output
            last = h[:, -1:]
            h = torch.cat([h[:, :-1], last + alpha * torch.sqrt(last.pow(2).mean(-1, keepdim=True) + 1e-12) * v],
                          dim=1)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        with torch_hooks([(hf.model.layers[layer], "post", steer) for layer in layers]):
            expected = hf_generate(hf, chat_ids(tokenizer, CHATS[row]), REAL_NEW, **PAPER_DECODING)
        assert new_ids(out.tokens[row]) == expected, f"prompt {row}: {out.texts[row]!r}"
    unsteered = default_model_replies["paper"].tokens[:rows]
    assert sum(not np.array_equal(a, b) for a, b in zip(out.tokens, unsteered)) >= rows - 1
