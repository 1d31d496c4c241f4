"""Circuit budgets, transferred from the original 28-layer, 24-head model by method.md §8."""
from __future__ import annotations

import dataclasses
import math

from emojax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Budget:
    neurons: int
    heads: int
    min_neurons: int
    min_heads: int
    cap_ratio: float = 0.4

    @property
    def total(self) -> int:
        return self.neurons + self.heads


def transferred_budget(config: ModelConfig) -> Budget:
    """K_mlp = 14 L; K_attn = round(L * min(6, H/4)); minima 4 neurons and max(1, min(2, round(H/12))) heads.

    For Llama-3.2-3B (L 28, H 24) this gives the original 392 + 168 with minima 4 / 2.
    """
    layers, heads = config.n_layers, config.n_heads
    return Budget(
        neurons=14 * layers,
        heads=math.floor(layers * min(6.0, heads / 4) + 0.5),
        min_neurons=4,
        min_heads=max(1, min(2, round(heads / 12))),
    )


def literal_budget() -> Budget:
    """The original numbers unchanged (560 = 392 + 168, minima 4 / 2)."""
    return Budget(neurons=392, heads=168, min_neurons=4, min_heads=2)
