"""The scans' FLOP counts (experiments/bench/scan_flops.py) agree with the forward's own count.

A one-token row through every layer over T cached keys is exactly what `forward_flops` counts for a
one-token batch with context T, so the suffix counts can be checked against it layer by layer."""
from __future__ import annotations

import pytest

from experiments.bench.common import forward_flops, shape_config
from experiments.bench.peer_common import Edit
from experiments.bench.scan_flops import full_forward_scan_flops, mlp_layer_flops, suffix_scan_flops

B, T = 5, 17


@pytest.fixture(scope="module")
def config():
    return shape_config("smollm2-135m")


def _suffix_only(config, edits, **kw) -> int:
    return suffix_scan_flops(config, edits, B, T, **kw) - forward_flops(config, B, T, logits="none")


def test_a_whole_suffix_from_layer_zero_is_a_one_token_forward(config):
    one_token = forward_flops(config, B, 1, logits="none", context=T)
    assert _suffix_only(config, [Edit(0, "neuron_in", 0, 1)], whole_edited_layer=True) == one_token
    # emojax starts above a neuron edit: every layer but the edited one
    assert _suffix_only(config, [Edit(0, "neuron_in", 0, 1)]) * config.n_layers == one_token * (config.n_layers - 1)


def test_a_head_edit_reruns_its_layers_mlp_and_the_layers_above(config):
    last = config.n_layers - 1
    assert _suffix_only(config, [Edit(last, "head_in", 0, config.head_dim)]) == mlp_layer_flops(config, B)
    assert _suffix_only(config, [Edit(last, "neuron_in", 0, 1)]) == 0  # only the read-out is left
    per_layer = forward_flops(config, B, 1, logits="none", context=T) // config.n_layers
    assert _suffix_only(config, [Edit(last - 3, "head_in", 0, 1)]) == 3 * per_layer + mlp_layer_flops(config, B)


def test_variants_add_up_and_full_forwards_count_the_clean_one(config):
    edits = [Edit(layer, "neuron_in", j, j + 1) for layer in (2, 9) for j in range(3)]
    assert _suffix_only(config, edits) == sum(_suffix_only(config, [e]) for e in edits)
    assert full_forward_scan_flops(config, 6, B, T) == 7 * forward_flops(config, B, T, logits="none")
