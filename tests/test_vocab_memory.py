"""A 262k vocabulary (Gemma 3) never gets logits for every position where only some are needed: no
array the size of [B, T, V] appears in the programs of generation (prefill and decode steps), the
fluency pass (reply columns, in chunks) or the scans (which read <h_final, v>, never logits). The
programs are traced, not run, on a one-layer model with Gemma 3's vocabulary."""
from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.generation.loop import generate_tokens
from emojax.judge.perplexity import reply_nll
from emojax.model.config import config_from_hf
from emojax.model.params import random_params
from emojax.scan import capture_prefix, causal_head_scan
from emojax.scan.prefix import _capture
from emojax.scan.heads import _edit_chunk

VOCAB = 262_144
CONFIG = config_from_hf({"model_type": "gemma3_text", "vocab_size": VOCAB, "hidden_size": 8, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "intermediate_size": 8,
                         "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]})
B, T = 2, 64


def largest_intermediate(closed: jax.extend.core.ClosedJaxpr) -> int:
    """Elements of the largest value any equation of the program (its sub-programs included) makes."""
    biggest = 0

    def walk(jaxpr: jax.extend.core.Jaxpr) -> None:
        nonlocal biggest
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()), dtype=np.int64)))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(closed.jaxpr)
    return biggest


@pytest.fixture(scope="module")
def params():
    return jax.tree_util.tree_map(jnp.asarray, random_params(CONFIG))


def weights_bound() -> int:
    """The embedding (tied LM head) itself, [V, D], and a few rows' logits; full logits are B*T*V."""
    return VOCAB * CONFIG.d_model + 4 * B * VOCAB


def test_generation_holds_the_last_position_only(params):
    tokens, mask = jnp.zeros((B, T), jnp.int32), jnp.ones((B, T), bool)
    program = jax.make_jaxpr(lambda p, t, m: generate_tokens(p, t, m, config=CONFIG, max_new_tokens=4).tokens)(
        params, tokens, mask)
    assert largest_intermediate(program) <= weights_bound() < B * T * VOCAB


def test_fluency_pass_holds_a_few_reply_columns(params):
    width = 32
    tokens, mask = jnp.zeros((B, T), jnp.int32), jnp.ones((B, T), bool)
    reply_mask = jnp.ones((B, width), bool)
    program = jax.make_jaxpr(lambda p, t, m, r: reply_nll(p, t, m, r, config=CONFIG, reply_width=width,
                                                          logits_budget=4 * B * VOCAB * 2))(params, tokens, mask,
                                                                                          reply_mask)
    assert largest_intermediate(program) <= weights_bound() < B * width * VOCAB


def test_scans_never_form_logits(params):
    tokens, mask = jnp.zeros((B, T), jnp.int32), jnp.ones((B, T), bool)
    capture = jax.make_jaxpr(lambda p, t, m: _capture(p, t, m, config=CONFIG, keep_sequence=True))(params, tokens, mask)
    assert largest_intermediate(capture) <= VOCAB * CONFIG.d_model
    prefix = capture_prefix(params, tokens, mask, config=CONFIG, keep_sequence=True)
    scale = jnp.ones((3, CONFIG.n_heads))
    add = jnp.zeros((3, B, CONFIG.n_heads, CONFIG.head_dim))
    readout = jnp.ones((B, CONFIG.d_model))
    for positions in ("last", "all"):
        chunk = jax.make_jaxpr(lambda p, x: _edit_chunk(p, x, 0, scale, add, readout, config=CONFIG,
                                                        positions=positions))(params, prefix)
        assert largest_intermediate(chunk) <= VOCAB * CONFIG.d_model
    assert causal_head_scan(params, prefix, readout, config=CONFIG).effect.shape == (2, 2, B)
