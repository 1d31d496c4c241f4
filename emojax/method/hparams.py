"""Paper hyperparameters and their transfer to models of other depth and width (method.md §8)."""
from __future__ import annotations

import dataclasses
import math

from emojax.model.config import ModelConfig

ORIGINAL_LAYERS = 28
ORIGINAL_D_MODEL = 3072
STEER_LAYERS = (11, 20)
REF_LAYERS = (21, 25)
STEER_ALPHA = 8.0
INFLUENCE_ALPHAS = (0.1, 0.3, 0.5, 0.7)
MODULATION_SCALES = {"anger": 0.8}  # official per-emotion scales; every other emotion uses 1.0


def map_layer(layer: int, n_layers: int, original: int = ORIGINAL_LAYERS) -> int:
    """l' = floor(l (L-1)/(L0-1) + 0.5): the same fractional depth on a model of n_layers."""
    return math.floor(layer * (n_layers - 1) / (original - 1) + 0.5)


def map_range(first: int, last: int, n_layers: int) -> range:
    return range(map_layer(first, n_layers), map_layer(last, n_layers) + 1)


@dataclasses.dataclass(frozen=True)
class Transferred:
    steer_layers: range
    ref_layers: range
    steer_alpha: float

    def describe(self) -> dict:
        return {"steer_layers": [self.steer_layers.start, self.steer_layers.stop - 1],
                "ref_layers": [self.ref_layers.start, self.ref_layers.stop - 1],
                "steer_alpha": self.steer_alpha}


def transferred(config: ModelConfig, literal_alpha: bool = False) -> Transferred:
    """Layer bands by fractional depth; alpha norm-matched, 8 sqrt(d / 3072), unless literal."""
    alpha = STEER_ALPHA if literal_alpha else STEER_ALPHA * math.sqrt(config.d_model / ORIGINAL_D_MODEL)
    return Transferred(
        steer_layers=map_range(*STEER_LAYERS, config.n_layers),
        ref_layers=map_range(*REF_LAYERS, config.n_layers),
        steer_alpha=alpha)


def modulation_scale(emotion: str, base: float = 1.0, official: bool = True) -> float:
    """lambda_e: `base`, times the official per-emotion factor (anger 0.8) unless `official` is off."""
    return base * (MODULATION_SCALES.get(emotion, 1.0) if official else 1.0)
