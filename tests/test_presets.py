"""The presets' sizes: quick tunes and runs every control within its budget; standard is 720 test items."""
from __future__ import annotations

from emojax.data import items, load_dataset, subsample
from emojax.stages import random_circuits
from emojax.stages.context import PRESETS


def test_quick_tunes_both_methods_and_runs_the_random_control():
    quick = PRESETS["quick"]
    assert quick.sweeps and quick.random_draws >= random_circuits.MIN_DRAWS
    assert quick.tune_groups is not None and quick.random_groups is not None  # small subsamples
    # A search step's doses share one generation: the first grid of 3 doses fills two batches.
    assert 3 * 6 * quick.tune_groups <= 2 * quick.batch_size


def test_standard_is_720_test_items_at_48_tokens_with_the_causal_ranking():
    standard = PRESETS["standard"]
    test = subsample(load_dataset("bundled:test"), standard.test_per_theme)
    assert len(items(test)) == 720 and standard.max_new_tokens <= 48
    assert standard.sweeps and standard.tune_groups is not None and standard.causal_prompts > 0
    assert standard.random_draws >= random_circuits.MIN_DRAWS
