"""The memory planner: chunk sizes from a budget change no scan result (up to float32 rounding), and a budget too small for
one row is refused in one line naming the stage and what it needs."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emojax import scan
from emojax.model.params import random_params
from emojax.scan import memory_plan
from emojax.scan.memory_plan import (BudgetTooSmall, available_bytes, cpu_upcast_bytes, decode_copy_bytes,
                                     decode_without_copy, default_budget, held_weight_bytes, plan_chunk,
                                     plan_generation, prefix_bytes, sequence_bytes, token_bytes, weight_bytes)
from experiments.bench.common import shape_config

PROMPTS, TOKENS = 2, 7


@pytest.fixture(scope="module")
def tiny():
    config = shape_config("tiny")
    params = random_params(config, seed=3)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (PROMPTS, TOKENS), np.int32)
    mask = np.ones(tokens.shape, bool)
    mask[0, :2] = False  # a left-padded row
    prefix = scan.capture_prefix(params, tokens, mask, config=config, keep_sequence=True)
    readout = np.random.default_rng(1).normal(size=(PROMPTS, config.d_model)).astype(np.float32)
    return config, params, prefix, readout


def _plans(config, budget_rows: int | None):
    """Neuron-, head- and sublayer-scan chunk plans, for a budget roomy enough for everything (None)
    or for exactly `budget_rows` rows of each."""
    resident = weight_bytes(config, np.float32) + prefix_bytes(config, PROMPTS, TOKENS, np.float32, keep_sequence=True)
    rows = {"neuron scan": (PROMPTS * token_bytes(config, TOKENS), config.d_ff),
            "head scan": (PROMPTS * sequence_bytes(config, TOKENS), config.n_heads),
            "sublayer influence": (PROMPTS * token_bytes(config, TOKENS), 4)}
    plans = {}
    for stage, (row, wanted) in rows.items():
        budget = 2 ** 40 if budget_rows is None else resident + budget_rows * row
        plans[stage] = plan_chunk(stage, budget=budget, resident=resident, row_bytes=row, wanted=wanted).rows
    return plans


def _scans(tiny, plans):
    config, params, prefix, readout = tiny
    neurons = scan.causal_neuron_scan(params, prefix, readout, config=config, chunk=plans["neuron scan"])
    heads = scan.causal_head_scan(params, prefix, readout, config=config, positions="all", chunk=plans["head scan"])
    sigma = np.ones((2, config.n_layers), np.float32)
    directions = np.random.default_rng(2).normal(size=(2, config.n_layers, config.d_model)).astype(np.float32)
    influence = scan.sublayer_influence(params, prefix, directions, sigma, (0.1, 0.3, 0.5, 0.7), readout,
                                        config=config, chunk=plans["sublayer influence"])
    return neurons.effect, heads.effect, influence.perturbed


def test_two_budgets_give_the_same_scans_in_different_chunks(tiny):
    roomy, tight = _plans(tiny[0], None), _plans(tiny[0], 1)
    assert roomy == {"neuron scan": tiny[0].d_ff, "head scan": tiny[0].n_heads, "sublayer influence": 4}
    assert tight == {"neuron scan": 1, "head scan": 1, "sublayer influence": 1}
    # Equal up to float32 rounding: a chunk's shape changes how the matmul kernels block their sums.
    scale = np.abs(tiny[2].final @ tiny[3].T).max()  # the size of the clean scores the effects are taken from
    for big, small in zip(_scans(tiny, roomy), _scans(tiny, tight)):
        assert np.abs(big).max() > 1e-3 * scale
        np.testing.assert_allclose(small, big, rtol=0, atol=1e-5 * scale)


def test_the_plan_takes_the_most_rows_that_fit():
    plan = plan_chunk("neuron scan", budget=1000, resident=300, row_bytes=100, wanted=50)
    assert (plan.rows, plan.peak_bytes) == (7, 1000)
    assert plan_chunk("neuron scan", budget=10 ** 9, resident=300, row_bytes=100, wanted=50).rows == 50


def test_a_budget_without_room_for_one_row_is_refused_in_one_line():
    mib = 2 ** 20
    with pytest.raises(BudgetTooSmall) as err:
        plan_chunk("neuron scan", budget=100 * mib, resident=90 * mib, row_bytes=20 * mib, wanted=8)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("neuron scan: one row needs 110.0 MiB (90.0 MiB resident + 20.0 MiB per row)")
    assert message.endswith("the memory budget is 100.0 MiB")


def test_generation_drops_the_decode_copy_only_when_the_budget_cannot_hold_it():
    config = shape_config("tiny")
    weights, copy, row = weight_bytes(config, np.float32), decode_copy_bytes(config, np.float32), 1000
    plan = lambda budget: plan_generation("steered generation", budget=budget, resident=weights, config=config,
                                          dtype=np.float32, row_bytes=row, wanted=4)
    roomy, low = plan(weights + copy + 4 * row), plan(weights + copy - 1)
    assert (roomy[0].rows, roomy[1]) == (4, False)
    assert low[1] and low[0].rows == 4 and low[0].peak_bytes <= weights + copy
    with pytest.raises(BudgetTooSmall, match=r"^steered generation \(low_memory\): one row needs"):
        plan(weights + row - 1)


def test_half_precision_weights_on_a_cpu_hold_their_float32_copy():
    config = shape_config("llama-3.2-3b")
    assert cpu_upcast_bytes(config, np.float32, "cpu") == 0
    assert cpu_upcast_bytes(config, jnp.bfloat16, "gpu") == 0
    # The layer matrices in float32: a little under twice the bfloat16 weights (the embedding is not copied).
    ratio = cpu_upcast_bytes(config, jnp.bfloat16, "cpu") / weight_bytes(config, jnp.bfloat16)
    assert 1.6 < ratio < 2.0
    assert held_weight_bytes(config, jnp.bfloat16, "cpu") == weight_bytes(config, jnp.bfloat16) + cpu_upcast_bytes(
        config, jnp.bfloat16, "cpu")


def test_without_a_memory_figure_generation_keeps_the_copy(monkeypatch):
    def unknown() -> int:
        raise OSError("/proc/meminfo has no MemAvailable line")

    monkeypatch.setattr(memory_plan, "default_budget", unknown)
    assert not decode_without_copy(shape_config("tiny"), np.float32, rows=4, prompt_tokens=8, new_tokens=2)
    assert decode_without_copy(shape_config("tiny"), np.float32, rows=4, prompt_tokens=8, new_tokens=2, budget=1)


def test_the_default_budget_leaves_a_margin():
    assert 0 < default_budget() < available_bytes()
