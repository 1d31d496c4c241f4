"""experiments/bench/suffix_parts.py times every part of a suffix pass at the scans' chunk shapes."""
from __future__ import annotations

import math

import jax.numpy as jnp

from experiments.bench.common import BenchContext, BenchSizes
from experiments.bench.scans import RANDOM_PROMPT_LENGTH
from experiments.bench.suffix_parts import NEURON_CHUNK, bench_suffix_parts

PARTS = ("attention", "attention_products", "mlp", "mlp_products")


def test_every_part_is_timed_at_the_scans_shapes(tiny_model):
    tiny = tiny_model("llama_gqa_tied")
    ctx = BenchContext(tiny.name, tiny.config, tiny.params, None, jnp.float32, repeats=1, baseline=False,
                       sizes=BenchSizes(scan_prompts=2))
    result = bench_suffix_parts(ctx)
    assert result["head_scan_rows"] == tiny.config.n_heads * 2
    assert result["neuron_scan_rows"] == NEURON_CHUNK * 2
    for scan in ("head_scan", "neuron_scan"):
        assert result[f"{scan}_context"] == RANDOM_PROMPT_LENGTH  # the cached positions and t* itself
        for part in PARTS:
            assert result[f"{scan}_{part}_ms_per_layer"] > 0 and result[f"{scan}_{part}_pct_of_peak"] > 0
        whole = result[f"{scan}_attention_ms_per_layer"] + result[f"{scan}_mlp_ms_per_layer"]
        assert math.isclose(result[f"{scan}_layer_ms"], whole)
    assert math.isclose(result["emojax_s"], result["head_scan_layer_ms"] * tiny.config.n_layers / 1e3)
