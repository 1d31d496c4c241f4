"""What the sliding window means: a query attends to the `window` cache slots ending at its own slot
(transformers' `kv_idx > q_idx - sliding_window` over cache positions). With left padding a row's
real tokens occupy consecutive slots, so these are its last `window` real tokens, in the prefill and
in every decode step; padding slots inside the window are masked, not replaced by earlier tokens.
A one-layer model shows it directly: each logit equals the model run on those tokens alone."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emojax import KVCache, forward
from emojax.generation.decode_step import decode_step, decode_weights
from emojax.model.config import config_from_hf
from emojax.model.params import random_params

WINDOW = 4
CONFIG = config_from_hf({"model_type": "mistral", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
                         "sliding_window": WINDOW, "rope_theta": 10000.0})
PARAMS = random_params(CONFIG, seed=1, scale=0.3)


def windowed_alone(tokens: np.ndarray, position: int) -> np.ndarray:
    """Logits at `position` from the tokens of the window ending there, nothing else, same positions."""
    start = max(0, position - WINDOW + 1)
    piece = tokens[start:position + 1][None]
    positions = np.arange(start, position + 1)[None]
    return np.asarray(forward(PARAMS, piece, config=CONFIG, positions=positions).logits)[0, -1]


def test_window_is_the_last_window_slots_in_prefill_and_decode():
    rng = np.random.default_rng(0)
    lengths, steps = (10, 6, 2), 5
    width = max(lengths)
    tokens = rng.integers(0, CONFIG.vocab_size, (len(lengths), width))
    mask = np.arange(width)[None] >= width - np.asarray(lengths)[:, None]
    extra = rng.integers(0, CONFIG.vocab_size, (len(lengths), steps))
    cache = KVCache.empty(CONFIG, len(lengths), width + steps)
    out = forward(PARAMS, tokens, config=CONFIG, mask=mask, cache=cache)
    weights = decode_weights(PARAMS, CONFIG)
    step = jax.jit(lambda token, c: decode_step(weights, token, c, config=CONFIG))
    decoded, c = [], out.cache.per_layer()
    for i in range(steps):
        logits, c = step(jnp.asarray(extra[:, i]), c)
        decoded.append(np.asarray(logits))
    for row, n in enumerate(lengths):
        real = np.concatenate([tokens[row, mask[row]], extra[row]])
        prefill_rows = np.asarray(out.logits)[row, mask[row]]
        for p in range(n):
            np.testing.assert_allclose(prefill_rows[p], windowed_alone(real, p), atol=1e-5, err_msg=f"{row}, {p}")
        for i in range(steps):
            np.testing.assert_allclose(decoded[i][row], windowed_alone(real, n + i), atol=1e-5,
                                       err_msg=f"row {row}, step {i}")
    # The window matters here: without it the long row's last logit is different.
    full = forward(PARAMS, tokens, config=CONFIG.replace(sliding_window=None, sliding_layers=()), mask=mask).logits
    assert np.abs(np.asarray(full)[0, -1] - np.asarray(out.logits)[0, -1]).max() > 1e-2
