"""The forward's attention has two forms: batched products over (row, kv head), which accelerators
run, and a loop over rows with plain matrix products, which the CPU runs. Both must compute the same
thing, and each backend must get its own form."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.model import block as model
from parallel_checks import tiny_config

CONFIG = tiny_config(n_heads=6, n_kv_heads=2, head_dim=16)
TOLERANCE = {jnp.float32: 2e-6, jnp.bfloat16: 2e-2}


def _allowed(rng: np.random.Generator, rows: int, queries: int, slots: int) -> np.ndarray:
    """Causal over the last `queries` slots, with random padding slots masked out (slot 0 stays)."""
    query_slots = slots - queries + np.arange(queries)
    causal = np.arange(slots)[None, :] <= query_slots[:, None]
    padding = rng.random((rows, 1, slots)) < 0.3
    padding[..., 0] = False
    return causal[None] & ~padding


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("queries", [1, 5, 24])
def test_forward_attention_forms_agree(dtype, queries):
    rng = np.random.default_rng(queries)
    rows, slots, dh = 3, 24, CONFIG.head_dim
    q = jnp.asarray(rng.normal(size=(rows, queries, CONFIG.n_heads, dh)), dtype)
    k, v = (jnp.asarray(rng.normal(size=(rows, slots, CONFIG.n_kv_heads, dh)), dtype) for _ in range(2))
    allowed = jnp.asarray(_allowed(rng, rows, queries, slots))
    batched = model._attention_batched(q, k, v, allowed, CONFIG)
    by_row = model._attention_by_row(q, k, v, allowed, CONFIG)
    assert batched.dtype == by_row.dtype == dtype
    np.testing.assert_allclose(np.asarray(by_row, np.float32), np.asarray(batched, np.float32),
                               atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    # Each backend lowers `attention` to its own form: rows on CPU, batched products elsewhere.
    form = model._attention_by_row if jax.default_backend() == "cpu" else model._attention_batched
    chosen = jax.jit(model.attention, static_argnames="config")(q, k, v, allowed, config=CONFIG)
    expected = jax.jit(form, static_argnames="config")(q, k, v, allowed, config=CONFIG)
    np.testing.assert_array_equal(np.asarray(chosen, np.float32), np.asarray(expected, np.float32))
