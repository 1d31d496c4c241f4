"""The parameter pytree: one dict of arrays, layer weights stacked on a leading layer axis.

Layout (L layers, D model width, H query heads, K kv heads, Dh head width, F MLP width, V vocab):

    embed       [V, D]
    final_norm  [D]
    lm_head     [D, V]            absent when embeddings are tied (logits use embed.T)
    layers:
      attn_norm [L, D]            mlp_norm [L, D]
      wq [L, D, H*Dh]   wk [L, D, K*Dh]   wv [L, D, K*Dh]   wo [L, H*Dh, D]
      bq [L, H*Dh]      bk [L, K*Dh]      bv [L, K*Dh]       (only when config.qkv_bias)
      w_gate [L, D, F]  w_up [L, D, F]    w_down [L, F, D]
      q_norm [L, Dh]    k_norm [L, Dh]                          (only when config.qk_norm)
      attn_post_norm [L, D]   mlp_post_norm [L, D]              (only when config.post_norms)

attn_norm is the attention's input norm and mlp_norm the MLP's (Llama's post_attention_layernorm,
Gemma's pre_feedforward_layernorm); the post norms act on the branch outputs before the residual add
(Gemma's post_attention_layernorm and post_feedforward_layernorm). Norm gains are stored as the
checkpoint stores them: with `config.norm_offset` (Gemma: 1) the gain used is offset + w.

Matrices are stored input-major (x @ w), i.e. transposed relative to torch's Linear.weight.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig

Params = dict[str, Any]


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """The expected shape of every parameter, in the layout above."""
    L, D, F = cfg.n_layers, cfg.d_model, cfg.d_ff
    layers = {
        "attn_norm": (L, D), "mlp_norm": (L, D),
        "wq": (L, D, cfg.q_dim), "wk": (L, D, cfg.kv_dim), "wv": (L, D, cfg.kv_dim),
        "wo": (L, cfg.q_dim, D),
        "w_gate": (L, D, F), "w_up": (L, D, F), "w_down": (L, F, D),
    }
    if cfg.qkv_bias:
        layers.update(bq=(L, cfg.q_dim), bk=(L, cfg.kv_dim), bv=(L, cfg.kv_dim))
    if cfg.qk_norm:
        layers.update(q_norm=(L, cfg.head_dim), k_norm=(L, cfg.head_dim))
    if cfg.post_norms:
        layers.update(attn_post_norm=(L, D), mlp_post_norm=(L, D))
    shapes: dict[str, Any] = {"embed": (cfg.vocab_size, D), "final_norm": (D,), "layers": layers}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (D, cfg.vocab_size)
    return shapes


def check_params(params: Params, cfg: ModelConfig, source: str = "params") -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped parameter."""
    problems: list[str] = []

    def walk(expected: dict, got: dict, prefix: str) -> None:
        for key in expected.keys() - got.keys():
            problems.append(f"missing {prefix}{key}")
        for key in got.keys() - expected.keys():
            problems.append(f"unexpected {prefix}{key}")
        for key in expected.keys() & got.keys():
            if isinstance(expected[key], dict):
                walk(expected[key], got[key], f"{prefix}{key}.")
            elif tuple(np.shape(got[key])) != tuple(expected[key]):
                problems.append(f"{prefix}{key} has shape {tuple(np.shape(got[key]))}, expected {expected[key]}")

    walk(param_shapes(cfg), params, "")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(sorted(problems)))


def random_params(cfg: ModelConfig, seed: int = 0, dtype: Any = jnp.float32, scale: float = 0.05) -> Params:
    """Random weights of the right shapes (tests and accelerator benchmarks without real weights)."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    out = []
    for key, shape, path in zip(keys, leaves, paths):
        if "norm" in path:  # gains near 1 whatever the checkpoint convention
            out.append(1.0 - cfg.norm_offset + 0.1 * jax.random.normal(key, shape, dtype))
        else:
            out.append(scale * jax.random.normal(key, shape, dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def cast_params(params: Params, dtype: Any) -> Params:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
