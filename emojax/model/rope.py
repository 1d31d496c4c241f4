"""Rotary position embeddings, computed exactly as Hugging Face does (float32, rotate-half layout)."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig


def inverse_frequencies(config: ModelConfig, local: bool = False) -> np.ndarray:
    """[Dh/2] inverse frequencies, with Llama 3's frequency-dependent rescaling when configured.

    `local`: those of the sliding layers that have their own base (`config.rope_local_theta`, plain
    RoPE: Gemma 3's local layers), as transformers computes them per layer type."""
    dh = config.head_dim
    theta = config.rope_local_theta if local else config.rope_theta
    inv_freq = 1.0 / (theta ** (np.arange(0, dh, 2, dtype=np.int64).astype(np.float32) / dh))
    if local or config.rope_scaling is None:
        return inv_freq.astype(np.float32)
    s = dict(config.rope_scaling)
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions: jnp.ndarray, config: ModelConfig,
                local: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin, each [B, T, Dh], for integer position ids [B, T] (`local`: see inverse_frequencies)."""
    inv_freq = jnp.asarray(inverse_frequencies(config, local))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate x [B, T, heads, Dh] by the tables [B, T, Dh]."""
    return rotate(x, cos[:, :, None, :], sin[:, :, None, :])


def rotate(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Rotate x along its head-dim `axis` by tables that broadcast against it (rotate-half layout)."""
    first, second = jnp.split(x, 2, axis=axis)
    rotated = jnp.concatenate([-second, first], axis=axis)
    return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)
