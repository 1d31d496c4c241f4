"""Gradient attribution patching (method.md §14.4): first-order estimates of every ablation effect.

One forward and one backward pass per row chunk give, for the score s = <h_final[t*], readout>:

    neurons:  ds ~ ds/da_{l,j}[t*] * (a_ref - a_{l,j}[t*])                      [L, F, B(, R)]
    heads:    ds ~ sum_t <ds/dz_{l,h}[t], z_ref - z_{l,h}[t]>                    [L, H, B(, R)]
              (t over every real position, or t* alone with head_positions="last")

    result = attribution_scores(params, tokens, mask, readout, config=cfg)
    result.neurons, result.heads     same layouts as the exact causal scans (emojax.scan.neurons/heads)

Replacements follow emojax.scan.ablation (None = zero; [L, W] mean; [B, L, W] group-mean;
[R, B, L, W] resample, averaged over draws); head replacements are used at every edited position.

`ig_steps=K` refines the estimate with integrated gradients: for each layer, that layer's neurons
(or heads) move together along the straight path to their replacements, and the gradient is averaged
at the K midpoints alpha = (k - 1/2)/K, so saturation (SiLU, softmax) along the path is accounted
for. It costs K * L forward+backward passes per kind.

The probes are additive perturbations of z (all positions) and of g (t*), placed in a pass composed of
the same block pieces as `emojax.forward` (post-sublayer norms included, so the gradients go through
them); they are zero when scoring, so the forward values equal `emojax.forward`'s.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model import block
from emojax.model.config import ModelConfig
from emojax.scan import ablation, chunking
from emojax.scan.layers import (attention_heads_full, final_norm, mlp_activation, project_readout,
                                sequence_geometry)

Array = Any
HEAD_POSITIONS = ("all", "last")


class Attribution(NamedTuple):
    neurons: np.ndarray
    heads: np.ndarray


def _probed_score(params: dict[str, Any], tokens: Array, mask: Array, readout: Array, probe_z: Array,
                  probe_g: Array, config: ModelConfig) -> tuple[Array, tuple[Array, Array]]:
    """sum_b <h_final[b, t*], readout[b]> with z[l] += probe_z[l] (every position) and
    g[l][t*] += probe_g[l]; also returns the (probed) z [L, B, T, H*Dh] and g at t* [L, B, F]."""
    geo = sequence_geometry(mask, config)

    @jax.checkpoint
    def body(x: Array, xs: tuple[Array, Array, Array, Any]) -> tuple[Array, tuple[Array, Array]]:
        p, pz, pg, table_l = xs
        cos, sin, allowed = block.layer_geometry(geo, *block.layer_settings(config, table_l))
        z = attention_heads_full(x, p, cos, sin, allowed, config) + pz
        m = x + block.attn_out(z, p, config)
        g = mlp_activation(m, p, config)
        g = g.at[:, -1].add(pg)
        return m + block.mlp_out(g, p, config), (z, g[:, -1])

    x = block.embed(params, tokens, config)
    x, (z, g_last) = jax.lax.scan(body, x, (params["layers"], probe_z, probe_g, block.layer_table(config)))
    score = jnp.sum(project_readout(final_norm(x[:, -1], params, config), readout))
    return score, (z, g_last)


def _zeros_probes(tokens: Array, config: ModelConfig) -> tuple[Array, Array]:
    b, t = tokens.shape
    return (jnp.zeros((config.n_layers, b, t, config.q_dim), jnp.float32),
            jnp.zeros((config.n_layers, b, config.d_ff), jnp.float32))


def _estimates(grad_z: Array, grad_g: Array, z: Array, g: Array, ref_z: Array, ref_g: Array, weight: Array,
               config: ModelConfig) -> tuple[Array, Array]:
    """Neuron [L, F, B] and head [L, H, B] first-order effects. ref_z [B, L, H*Dh], ref_g [B, L, F];
    weight [B, T] selects the head positions."""
    neurons = jnp.einsum("lbf,lbf->lfb", grad_g, jnp.moveaxis(ref_g, 1, 0) - g)
    shift = jnp.moveaxis(ref_z, 1, 0)[:, :, None] - z  # [L, B, T, H*Dh]
    per_channel = grad_z * shift * weight[None, :, :, None]
    heads = per_channel.reshape(per_channel.shape[:3] + (config.n_heads, config.head_dim)).sum(axis=(2, 4))
    return neurons, jnp.moveaxis(heads, 1, 2)


def _ig_gradients(params: dict[str, Any], tokens: Array, mask: Array, readout: Array, z: Array, g: Array,
                  ref_z: Array, ref_g: Array, weight: Array, steps: int,
                  config: ModelConfig) -> tuple[Array, Array]:
    """Path-averaged gradients, layer by layer (each layer's components move together)."""
    zero_z, zero_g = _zeros_probes(tokens, config)
    shift_z = (jnp.moveaxis(ref_z, 1, 0)[:, :, None] - z) * weight[None, :, :, None]
    shift_g = jnp.moveaxis(ref_g, 1, 0) - g
    grad_fn = jax.grad(_probed_score, argnums=(4, 5), has_aux=True)
    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps

    def layer_average(layer: Array) -> tuple[Array, Array]:
        def at_alpha(alpha: Array) -> tuple[Array, Array]:
            probe_z = zero_z.at[layer].set(alpha * shift_z[layer])
            probe_g = zero_g.at[layer].set(alpha * shift_g[layer])
            (gz_z, _), _ = grad_fn(params, tokens, mask, readout, probe_z, zero_g, config)
            (_, gg_g), _ = grad_fn(params, tokens, mask, readout, zero_z, probe_g, config)
            return gz_z[layer], gg_g[layer]

        gz, gg = jax.lax.map(at_alpha, alphas)
        return gz.mean(axis=0), gg.mean(axis=0)

    return jax.lax.map(layer_average, jnp.arange(config.n_layers))


@functools.partial(jax.jit, static_argnames=("config", "positions", "ig_steps"))
def _chunk(params: dict[str, Any], tokens: Array, mask: Array, readout: Array, ref_z: Array, ref_g: Array, *,
           config: ModelConfig, positions: str, ig_steps: int) -> tuple[Array, Array]:
    weight = mask.astype(jnp.float32)
    if positions == "last":
        weight = weight * (jnp.arange(mask.shape[1]) == mask.shape[1] - 1)[None]
    zero_z, zero_g = _zeros_probes(tokens, config)
    (grad_z, grad_g), (z, g) = jax.grad(_probed_score, argnums=(4, 5), has_aux=True)(
        params, tokens, mask, readout, zero_z, zero_g, config)
    if ig_steps:
        grad_z, grad_g = _ig_gradients(params, tokens, mask, readout, z, g, ref_z, ref_g, weight, ig_steps,
                                       config)
    neurons, heads = _estimates(grad_z, grad_g, z, g, ref_z, ref_g, weight, config)
    return jnp.moveaxis(neurons, 2, 0), jnp.moveaxis(heads, 2, 0)  # rows first, for chunking


def _full_replacement(rep: np.ndarray | None, batch: int, config: ModelConfig, width: int) -> np.ndarray:
    return np.stack([ablation.replacement_at_layer(rep, l, batch, width) for l in range(config.n_layers)], axis=1)


def attribution_scores(params: dict[str, Any], tokens: Array, mask: Array, readout: Array, *,
                       config: ModelConfig, neuron_replacement: Array | None = None,
                       head_replacement: Array | None = None, head_positions: str = "all",
                       ig_steps: int = 0, chunk: int = 8) -> Attribution:
    """First-order (or integrated-gradient) estimates of every neuron and head ablation effect."""
    if head_positions not in HEAD_POSITIONS:
        raise ValueError(f"attribution_scores: head_positions={head_positions!r}; expected one of {HEAD_POSITIONS}")
    tokens = np.asarray(tokens, np.int32)
    mask = np.asarray(mask, bool)
    b = tokens.shape[0]
    readout = chunking.as_readout(readout, b, config.d_model)
    per_readout = readout[:, None] if readout.ndim == 2 else readout  # [B, R, D]
    neuron_draws = ablation.replacement_draws(neuron_replacement, "attribution_scores")
    head_draws = ablation.replacement_draws(head_replacement, "attribution_scores")
    n_draws = max(len(neuron_draws), len(head_draws))
    if min(len(neuron_draws), len(head_draws)) not in (1, n_draws):
        raise ValueError("attribution_scores: neuron and head replacements have different numbers of draws")
    neurons_sum, heads_sum = 0.0, 0.0
    for d in range(n_draws):
        ref_g = _full_replacement(neuron_draws[min(d, len(neuron_draws) - 1)], b, config, config.d_ff)
        ref_z = _full_replacement(head_draws[min(d, len(head_draws) - 1)], b, config, config.q_dim)
        per_r = [chunking.map_chunks(
            lambda idx: _chunk(params, tokens[idx], mask[idx], per_readout[idx, r], ref_z[idx], ref_g[idx],
                               config=config, positions=head_positions, ig_steps=ig_steps),
            b, chunk, desc="attribution") for r in range(per_readout.shape[1])]
        neurons_sum = neurons_sum + np.stack([n for n, _ in per_r], axis=-1)  # [B, L, F, R]
        heads_sum = heads_sum + np.stack([h for _, h in per_r], axis=-1)
    neurons = np.moveaxis(neurons_sum / n_draws, 0, 2)  # [L, F, B, R]
    heads = np.moveaxis(heads_sum / n_draws, 0, 2)
    if readout.ndim == 2:
        neurons, heads = neurons[..., 0], heads[..., 0]
    return Attribution(neurons=neurons, heads=heads)
