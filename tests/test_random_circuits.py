"""Random-circuit controls: per-layer counts kept, true members never reused, own Delta entries, seeded."""
from __future__ import annotations

import numpy as np
import pytest

from emojax.circuit import Circuit
from emojax.data import EMOTIONS
from emojax.runs import InputError
from emojax.stages import modulate, random_circuits
from stage_fixtures import TINY_CONFIG


def true_circuit(seed: int = 0) -> Circuit:
    rng = np.random.default_rng(seed)
    cfg = TINY_CONFIG
    return Circuit("anger", tuple(tuple(sorted(rng.choice(cfg.d_ff, k, replace=False).tolist())) for k in (3, 0, 7, 2)),
                   tuple(tuple(sorted(rng.choice(cfg.n_heads, k, replace=False).tolist())) for k in (1, 2, 0, 1)))


def test_random_circuit_keeps_per_layer_counts_and_avoids_true_members():
    truth = true_circuit()
    for seed in range(5):
        drawn, moved = random_circuits.random_circuit(truth, TINY_CONFIG, np.random.default_rng(seed))
        assert moved == 0
        assert [len(n) for n in drawn.neurons] == [len(n) for n in truth.neurons]
        assert [len(h) for h in drawn.heads] == [len(h) for h in truth.heads]
        assert not drawn.neuron_set() & truth.neuron_set() and not drawn.head_set() & truth.head_set()
        assert all(len(set(n)) == len(n) for n in drawn.neurons)


def test_a_full_layer_moves_its_shortfall_to_the_nearest_layer():
    truth = Circuit("fear", ((0,), (1,), (2,), (3,)), ((0, 1, 2, 3), (0,), (), (0, 1)))  # layer 0: every head
    drawn, moved = random_circuits.random_circuit(truth, TINY_CONFIG, np.random.default_rng(0))
    assert moved == 4 and sum(map(len, drawn.heads)) == 7 and len(drawn.heads[0]) == 0
    assert not drawn.head_set() & truth.head_set()
    assert len(drawn.heads[1]) == 3  # the three free heads of layer 1 take what fits there first


def test_a_circuit_too_large_to_avoid_is_refused():
    every = tuple(tuple(range(TINY_CONFIG.n_heads)) for _ in range(TINY_CONFIG.n_layers))
    with pytest.raises(InputError, match="does not fit"):
        random_circuits.random_circuit(Circuit("joy", ((),) * 4, every), TINY_CONFIG, np.random.default_rng(0))


def test_draws_are_seeded_and_differ():
    circuits = {e: true_circuit(i) for i, e in enumerate(EMOTIONS)}
    first = random_circuits.draw_circuits(circuits, TINY_CONFIG, seed=3, draws=5)
    again = random_circuits.draw_circuits(circuits, TINY_CONFIG, seed=3, draws=5)
    assert [d[0] for d in first] == [d[0] for d in again]
    assert len({d[0]["anger"].neurons for d in first}) == 5
    assert first[0][0] != random_circuits.draw_circuits(circuits, TINY_CONFIG, seed=4, draws=1)[0][0]


def test_each_random_member_gets_its_own_delta_entries():
    cfg = TINY_CONFIG
    circuits = {e: true_circuit(i) for i, e in enumerate(EMOTIONS)}
    drawn = random_circuits.draw_circuits(circuits, cfg, seed=0, draws=2)
    rng = np.random.default_rng(1)
    geometry = {"delta_mlp": rng.normal(size=(6, cfg.n_layers, cfg.d_ff)).astype(np.float32),
                "delta_attn": rng.normal(size=(6, cfg.n_layers, cfg.q_dim)).astype(np.float32)}
    scales = modulate.emotion_scales(2.0, official=True)
    neuron_add, head_add = modulate.stacked_edits([d[0] for d in drawn], [scales, scales], geometry, cfg)
    heads_delta = geometry["delta_attn"].reshape(6, cfg.n_layers, cfg.n_heads, cfg.head_dim)
    for d, (sets, _) in enumerate(drawn):
        for e, emotion in enumerate(EMOTIONS):
            row = d * 6 + e
            for layer in range(cfg.n_layers):
                members = list(sets[emotion].neurons[layer])
                np.testing.assert_allclose(neuron_add[row, layer, members], scales[e] * geometry["delta_mlp"][e, layer, members])
                others = np.setdiff1d(np.arange(cfg.d_ff), members)
                assert not neuron_add[row, layer, others].any()
                heads = list(sets[emotion].heads[layer])
                np.testing.assert_allclose(head_add[row, layer, heads], scales[e] * heads_delta[e, layer, heads])
