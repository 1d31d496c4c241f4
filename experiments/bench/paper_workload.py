"""The paper's full workload at a model shape, and its projection from measured per-unit times.

Counts are the official protocol's (docs/method.md §13 and §4: 2,847 accepted SEV items, 2,880
items per split, 100 new tokens, alphas {0.1, 0.3, 0.5, 0.7}) with every neuron and head of the
shape. The causal scans are not in the official protocol (method.md §14.2); their prompts are the
full preset's (`causal_prompts` per emotion). Each stage's projection is

    per_unit_s = wall_s / measured units;   total_s = per_unit_s x full units

with units that make the work proportional to their number: a prompt, an item, a generated token,
or for the scans one variant on one prompt through one layer (a variant at layer l runs L - l
layers), so that a scan measured on a few layers projects to all of them.
"""
from __future__ import annotations

from typing import Any

from emojax.method.hparams import INFLUENCE_ALPHAS
from emojax.model.config import ModelConfig
from emojax.stages.context import PRESETS

ACCEPTED_ITEMS = 2847      # method.md §4 S4: N_e summed over the emotions (the original run)
SPLIT_ITEMS = 2880         # 160 records x 3 valences x 6 emotions
PROMPTED_ITEMS = 5760      # S1 on SEV and on the evaluation split
NEUTRAL_BASELINE = 480     # the neutral baseline: one reply per (scenario, valence) of the evaluation split
MAX_NEW_TOKENS = 100       # method.md §6
CAUSAL_PROMPTS = PRESETS["full"].causal_prompts * 6
GOAL_S = 30 * 60


def _layer_passes(config: ModelConfig) -> int:
    return sum(config.n_layers - layer for layer in range(config.n_layers))


def full_units(stage: str, config: ModelConfig) -> tuple[float, str, str]:
    """(units, how they are counted, unit) of `stage` in the full workload."""
    L, H, F = config.n_layers, config.n_heads, config.d_ff
    passes = _layer_passes(config)
    alphas = len(INFLUENCE_ALPHAS)
    table = {
        "capture": (ACCEPTED_ITEMS, f"{ACCEPTED_ITEMS} accepted items", "prompt"),
        "directions": (ACCEPTED_ITEMS, f"{ACCEPTED_ITEMS} accepted items", "item"),
        "neuron_contributions": (ACCEPTED_ITEMS, f"{ACCEPTED_ITEMS} items x all {L}x{F} neurons", "item"),
        "head_scores": (ACCEPTED_ITEMS, f"{ACCEPTED_ITEMS} items x all {L}x{H} heads", "item"),
        "head_scan": (CAUSAL_PROMPTS * H * passes,
                      f"{CAUSAL_PROMPTS} prompts x {H} heads x {passes} layer passes (sum over l of L-l)",
                      "head-prompt-layer"),
        "neuron_scan": (CAUSAL_PROMPTS * F * passes,
                        f"{CAUSAL_PROMPTS} prompts x {F} neurons x {passes} layer passes (sum over l of L-l)",
                        "neuron-prompt-layer"),
        "sublayer_influence": (ACCEPTED_ITEMS * 2 * L * alphas,
                               f"{ACCEPTED_ITEMS} items x 2 kinds x {L} layers x {alphas} alphas",
                               "one-token pass"),
        "circuits": (6, "6 emotions", "circuit"),
        "generation_prompted": ((PROMPTED_ITEMS + NEUTRAL_BASELINE) * MAX_NEW_TOKENS,
                                f"({PROMPTED_ITEMS} prompted + {NEUTRAL_BASELINE} neutral baseline) x "
                                f"{MAX_NEW_TOKENS} tokens", "generated token"),
        "generation_steered": (SPLIT_ITEMS * MAX_NEW_TOKENS, f"{SPLIT_ITEMS} items x {MAX_NEW_TOKENS} tokens",
                               "generated token"),
        "generation_circuit": (SPLIT_ITEMS * MAX_NEW_TOKENS, f"{SPLIT_ITEMS} items x {MAX_NEW_TOKENS} tokens",
                               "generated token"),
    }
    return table[stage]


def projection(stages: dict[str, dict[str, Any]], config: ModelConfig) -> dict[str, Any]:
    """Per stage that ran: per-unit time x full units = total; the sum against the 30-minute goal.
    Compilation (each stage's `compile_s`) is paid once and listed apart."""
    rows, total, compile_s = {}, 0.0, 0.0
    for name, figures in stages.items():
        if "wall_s" not in figures:
            rows[name] = {"not_projected": figures.get("skipped", "did not run")}
            continue
        units, counted, unit = full_units(name, config)
        per_unit = figures["wall_s"] / figures["units"]
        seconds = per_unit * units
        rows[name] = {"unit": unit, "per_unit_s": per_unit, "count": units, "count_is": counted, "total_s": seconds,
                      "arithmetic": f"{figures['wall_s']:.4g} s / {figures['units']:.4g} measured = {per_unit:.4g} s "
                                    f"per {unit}; x {units:.4g} = {seconds:.4g} s"}
        total += seconds
        compile_s += figures.get("compile_s") or 0.0
    missing = [name for name, row in rows.items() if "not_projected" in row]
    return {"stages": rows, "total_s": total, "compile_s_once": compile_s, "goal_s": GOAL_S,
            "within_goal": None if missing else total + compile_s <= GOAL_S, "stages_not_projected": missing}
