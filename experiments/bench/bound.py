"""How fast the backend's matmul kernels alone run a workload's weight products at its shapes.

The "% of the limit" figures compare a run with the FLOPs at the peak of one square 2048 x 2048
product. The products of a real workload have other shapes, and the backend's kernels may run them
well below that peak (a decode step multiplies every weight by only B columns). This module times the
workload's weight products alone: the same weights, shapes and layouts as emojax uses, chained layer
after layer with only additions in between, and no norms, rotary tables, attention, softmax or cache
writes. A run cannot be faster than its products, so `limit_s / products_s` bounds the fraction of
the limit that any formulation built on these kernels can reach.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from emojax.generation.decode_step import decode_weights
from emojax.model.config import ModelConfig
from emojax.model.forward import lm_head
from experiments.bench.common import time_call

Array = Any


@functools.partial(jax.jit, static_argnames="logits")
def _prefill_products(params: dict[str, Any], x: Array, logits: str) -> tuple[Array, Array]:
    """x [B, T, D] through every layer's q, k, v, o, gate, up and down products (scanned over the
    stacked weights, as `forward` does), then the LM head at every position ("all") or the last
    ("last"); keys and values are kept per layer, as a prefill keeps them for its cache."""
    def layer(x, p):
        q, k, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
        g = (x @ p["w_gate"]) * (x @ p["w_up"])
        return x + q @ p["wo"] + g @ p["w_down"], (k, v)

    x, kv = jax.lax.scan(layer, x, params["layers"])
    head_in = x if logits == "all" else x[:, -1]
    return jnp.matmul(head_in, lm_head(params), preferred_element_type=jnp.float32), kv


@jax.jit
def _decode_products(weights: dict[str, Any], h: Array) -> tuple[Array, list[Array]]:
    """h [D, B] through every layer's products in the decode step's layout (W[out, in] @ h[in, B],
    layers unrolled over per-layer weights), then the LM head."""
    kept = []
    for p in weights["layers"]:
        q, k, v = p["wq"] @ h, p["wk"] @ h, p["wv"] @ h
        g = (p["w_gate"] @ h) * (p["w_up"] @ h)
        h = h + p["wo"] @ q + p["w_down"] @ g
        kept += [k, v]
    return jnp.matmul(weights["head"], h, preferred_element_type=jnp.float32), kept


def prefill_products_s(params: dict[str, Any], config: ModelConfig, batch: int, seq: int, logits: str,
                       repeats: int) -> float:
    """Median seconds of one forward's weight products over batch x seq tokens, with the LM head at
    every position (`logits="all"`) or at the last one ("last")."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, seq, config.d_model), params["embed"].dtype)
    return time_call(lambda: _prefill_products(params, x, logits), repeats).median_s


def generation_products_s(params: dict[str, Any], config: ModelConfig, batch: int, prompt_width: int,
                          new_tokens: int, repeats: int) -> dict[str, float]:
    """Median seconds of a generation's weight products: the prefill's over batch x prompt_width rows
    (LM head at the last position) plus `new_tokens - 1` decode steps' over `batch` columns."""
    prefill = prefill_products_s(params, config, batch, prompt_width, "last", repeats)
    h = jax.random.normal(jax.random.PRNGKey(1), (config.d_model, batch), params["embed"].dtype)
    weights = decode_weights(params, config)
    step = time_call(lambda: _decode_products(weights, h), repeats).median_s
    return {"prefill_products_s": prefill, "decode_step_products_s": step,
            "products_s": prefill + (new_tokens - 1) * step}
