"""What every pipeline stage receives: the model, the run directory, the splits, the judge, settings.

A stage is `run(ctx) -> summary dict`; it writes its outputs under `ctx.run.stage(name)` and the
pipeline marks it done, so a resumed run skips finished stages.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from emojax.data import SevRecord
from emojax.method.hparams import Transferred, transferred
from emojax.runs import RunDir


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of a pipeline run. `None` per-theme counts mean the whole split."""

    name: str
    train_per_theme: int | None
    test_per_theme: int | None
    max_new_tokens: int
    batch_size: int
    validation_draws: int        # random-control draws in the ablation/enhancement curves
    causal_prompts: int          # prompts per emotion in the exhaustive causal scans (0: skip)
    sweeps: bool                 # tune steering alpha and circuit lambda on the train split
    validation: bool = True      # ablation and enhancement curves (S4c): hours on a CPU at full size
    sublayer_per_emotion: int | None = None  # influence samples per emotion in S6d (None: every captured item)
    tune_groups: int | None = None   # train (scenario, valence) groups the tuning uses (None: all)
    tune_extensions: int = 3         # at most this many grid extensions per tuned method
    random_draws: int = 5            # random-circuit control draws (0: no control)
    random_groups: int | None = None  # test groups the random-circuit control uses (None: all)
    variants: tuple[str, ...] = ()    # circuit variants tuned on train, chosen per emotion (emojax.stages.variants)

    def identity(self) -> dict[str, Any]:
        """The preset as a run's identity records it. The circuit variants are left out: the variant stages'
        own fingerprints record them, so a run made before a preset named them resumes with them added."""
        record = dataclasses.asdict(self)
        del record["variants"]
        return record


# The circuit variants quick and standard choose among per emotion, on train: the run's circuits, and
# members allocated by influence read out at mid-depth. On SmolLM2's standard train table of fifteen
# variants (docs/results.md), that is the one variant that won an emotion outright (happiness 0 -> 75%)
# without a causal scan beyond the preset's own; it also ties for the best anger and beats the run's
# circuit on surprise. Each costs one lambda tuning, the second an influence scan too.
CHOSEN_VARIANTS = ("default", "ref_middle")

PRESETS = {
    # About 10.5 minutes on a 2-core CPU (the circuit-variant choice included, 105 s of it): every
    # stage of S1-S7 and the report. The
    # ablation/enhancement validation (head edits at every position recompute the layers above them
    # for each of hundreds of variants) and the exhaustive causal scans are left to --validation and
    # --causal, or to the full preset.
    # Tuning: 5 train groups (30 items, 5 per emotion) per dose; a search step's doses share one
    # generation, so the first grid (3 doses, 90 rows) is two batches of 48 and each extension one
    # more (at most 2 per method). The random-circuit control: 5 draws on 3 test groups (90 rows, two
    # batches). At about 20 s per batch (the steering and modulation stages' rate) that is 80-160 s of
    # tuning and 40 s of control on top of the untuned run.
    "quick": Preset("quick", train_per_theme=2, test_per_theme=1, max_new_tokens=32, batch_size=48,
                    validation_draws=20, causal_prompts=0, sweeps=True, validation=False,
                    sublayer_per_emotion=16, tune_groups=5, tune_extensions=2, random_draws=5, random_groups=3,
                    variants=CHOSEN_VARIANTS),
    # 5 test scenarios per theme (720 items) at 48 new tokens, tuning on 8 train groups (48 items, one
    # batch per dose), the random-circuit control on 8 test groups, and the causal scans (every neuron
    # and head of every layer, 1 prompt per emotion) for the causal circuit ranking. Budget: 45
    # minutes on a 2-core CPU. The S4c curves are left to --validation.
    "standard": Preset("standard", train_per_theme=2, test_per_theme=5, max_new_tokens=48, batch_size=48,
                       validation_draws=20, causal_prompts=1, sweeps=True, validation=False,
                       sublayer_per_emotion=16, tune_groups=8, tune_extensions=2, random_draws=5,
                       random_groups=8, variants=CHOSEN_VARIANTS),
    "full": Preset("full", train_per_theme=None, test_per_theme=None, max_new_tokens=100,
                   batch_size=64, validation_draws=20, causal_prompts=16, sweeps=True),
}


@dataclasses.dataclass
class Settings:
    """Method choices with their defaults (method.md §11); every one is recorded in the manifest."""

    directions_rule: str = "accepted"      # "accepted" (paper) or "all" prompted items
    min_complete_groups: int = 12          # below this, "accepted" falls back to "all" with a warning
    steer_alpha: float | None = None       # None: the norm-matched transfer of §8
    literal_alpha: bool = False
    modulation_scale: float = 1.0
    official_scales: bool = True           # anger 0.8 (D11)
    ratio_mode: str = "fixed"
    budget: str = "transferred"            # "transferred" (§8) or "literal" (560 = 392 + 168)
    date_string: str = "15 Sep 2025"
    harmonised: bool = False               # identical decoding for every condition (D12)
    per_emotion_dose: bool = False         # tune alpha and lambda per emotion (else one each, anger 0.8)
    circuit_ranking: str = "analytic"      # circuit members by C_mean / head importance, or causal scans
    seed: int = 0


@dataclasses.dataclass
class StageContext:
    model: Any                   # emojax.loading.LoadedModel
    run: RunDir
    train: Sequence[SevRecord]
    test: Sequence[SevRecord]
    judge: Any                   # emojax.judge judge callable
    preset: Preset
    settings: Settings = dataclasses.field(default_factory=Settings)
    mesh: Any = None             # jax.sharding.Mesh: weights placed on it, prompt rows split over 'data'

    @property
    def config(self):
        return self.model.config

    @property
    def hparams(self) -> Transferred:
        base = transferred(self.config, literal_alpha=self.settings.literal_alpha)
        if self.settings.steer_alpha is not None:
            return dataclasses.replace(base, steer_alpha=self.settings.steer_alpha)
        return base
