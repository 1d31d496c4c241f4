"""The presets' sizes: quick tunes and runs every control within its budget; standard is 720 test items."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from emojax.data import items, load_dataset, subsample
from emojax.launch.pipeline import Options
from emojax.stages import random_circuits, variants
from emojax.stages.context import PRESETS, Settings


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


def test_quick_and_standard_choose_among_known_circuit_variants_by_default():
    for name in ("quick", "standard"):
        preset = PRESETS[name]
        assert preset.variants and [v.name for v in variants.select(preset.variants)] == list(preset.variants)
        assert "default" in preset.variants  # ties go to the run's own circuit
        assert Options.for_preset(SimpleNamespace(preset=preset, settings=Settings())).variants
        causal = Settings(circuit_ranking="causal")  # the variants change analytic members only
        assert not Options.for_preset(SimpleNamespace(preset=preset, settings=causal)).variants


def test_a_run_made_before_its_preset_named_variants_keeps_its_identity():
    quick = PRESETS["quick"]
    without = dataclasses.replace(quick, variants=())
    assert quick.identity() == without.identity() and "variants" not in quick.identity()
    assert dataclasses.replace(quick, tune_groups=6).identity() != quick.identity()
