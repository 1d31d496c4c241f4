"""Build a global emotion circuit from sublayer influence and component rankings (method.md S6e).

The circuit record uses the official JSON layout, so published circuits load unchanged:
`{emotion, K_total, ratio_mode, K_alloc:{mlp, attention}, min_per_layer, cap_ratio, summary,
layers:[{layer, mlp:{k, neurons}, attention:{k, heads}}]}`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from emojax.circuit.allocation import allocate, top_k_per_layer
from emojax.circuit.budget import Budget


@dataclasses.dataclass(frozen=True)
class Circuit:
    emotion: str
    neurons: tuple[tuple[int, ...], ...]   # per layer, ranked
    heads: tuple[tuple[int, ...], ...]     # per layer, ranked

    @property
    def n_layers(self) -> int:
        return len(self.neurons)

    def neuron_set(self) -> set[tuple[int, int]]:
        return {(l, j) for l, js in enumerate(self.neurons) for j in js}

    def head_set(self) -> set[tuple[int, int]]:
        return {(l, h) for l, hs in enumerate(self.heads) for h in hs}

    def to_record(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        record = dict(extra or {})
        record["emotion"] = self.emotion
        record["layers"] = [
            {"layer": l, "mlp": {"k": len(ns), "neurons": list(ns)},
             "attention": {"k": len(hs), "heads": list(hs)}}
            for l, (ns, hs) in enumerate(zip(self.neurons, self.heads))]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str = "circuit") -> "Circuit":
        try:
            layers = sorted(record["layers"], key=lambda item: item["layer"])
            if [item["layer"] for item in layers] != list(range(len(layers))):
                raise ValueError(f"{source}: layers must be 0..L-1 without gaps")
            return cls(
                emotion=str(record["emotion"]),
                neurons=tuple(tuple(int(j) for j in item["mlp"]["neurons"]) for item in layers),
                heads=tuple(tuple(int(h) for h in item["attention"]["heads"]) for item in layers))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: malformed circuit record ({err!r})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        path = Path(path)
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        return cls.from_record(record, source=str(path))


def split_budget(budget: Budget, influence_attn: np.ndarray, influence_mlp: np.ndarray,
                 ratio_mode: str) -> tuple[int, int]:
    """(neurons, heads): the fixed budget, or split by each kind's share of positive influence."""
    if ratio_mode == "fixed":
        return budget.neurons, budget.heads
    if ratio_mode != "auto":
        raise ValueError(f"ratio_mode={ratio_mode!r}; expected 'fixed' or 'auto'")
    pos_mlp = float(np.maximum(influence_mlp, 0).sum())
    pos_attn = float(np.maximum(influence_attn, 0).sum())
    share = pos_mlp / (pos_mlp + pos_attn) if pos_mlp + pos_attn > 0 else 0.5
    neurons = int(round(budget.total * share))
    return neurons, budget.total - neurons


def build_circuit(emotion: str, influence_attn: np.ndarray, influence_mlp: np.ndarray,
                  neuron_scores: np.ndarray, head_scores: np.ndarray, budget: Budget,
                  ratio_mode: str = "fixed") -> tuple[Circuit, dict[str, Any]]:
    """Allocate per-layer counts and pick each layer's top components.

    influence_*: [L] mean-over-alpha influence; neuron_scores [L, F] (C_mean); head_scores [L, H]
    (mean importance). Returns the circuit and its record (with the allocation log).
    """
    k_mlp, k_attn = split_budget(budget, influence_attn, influence_mlp, ratio_mode)
    alloc_mlp = allocate(influence_mlp, k_mlp, budget.min_neurons, neuron_scores.shape[1], budget.cap_ratio)
    alloc_attn = allocate(influence_attn, k_attn, budget.min_heads, head_scores.shape[1], budget.cap_ratio)
    circuit = Circuit(
        emotion=emotion,
        neurons=tuple(map(tuple, top_k_per_layer(neuron_scores, alloc_mlp.counts))),
        heads=tuple(map(tuple, top_k_per_layer(head_scores, alloc_attn.counts))))
    record = circuit.to_record({
        "K_total": k_mlp + k_attn, "ratio_mode": ratio_mode,
        "K_alloc": {"mlp": k_mlp, "attention": k_attn},
        "min_per_layer": {"mlp": alloc_mlp.base[0], "attention": alloc_attn.base[0]},
        "cap_ratio": budget.cap_ratio,
        "summary": {kind: {"planned": sum(a.planned), "used": sum(a.counts), "final_deficit": a.deficit}
                    for kind, a in (("mlp", alloc_mlp), ("attention", alloc_attn))},
        "allocation_log": {"mlp": alloc_mlp.log(), "attention": alloc_attn.log()},
    })
    return circuit, record
