"""Random-circuit control: is the circuit better than any edit of the same size?

Each draw replaces every emotion's circuit by a random one with the same number of neurons and heads
in every layer, never reusing a member of the true circuit; each random member receives its own
Delta entries (lambda_e * Delta^mlp_{e,l,j}, lambda_e * Delta^attn_{e,l,h}), at the lambda_e that
circuit modulation of the test split used, with the same positions and decoding (method.md S7).
Where a layer has fewer non-members than members (a layer whose heads are nearly all in the circuit),
the shortfall is drawn from the nearest layers with room and counted as `relocated`.

The draws (`preset.random_draws`, at least 5, seeded by (seed, draw, emotion)) run on
`preset.random_groups` evenly spaced test groups, all in one resumable generation. Outputs in
`<run>/random_circuit_test/`: draws.json (every drawn circuit), draw_<d>/records.jsonl and accuracy,
and the summary: fluent and judged accuracy per draw, their mean and sd, and the true circuit's on the
same items.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from emojax.circuit import Circuit
from emojax.data import EMOTIONS
from emojax.evaluation.accuracy import accuracy_tables
from emojax.model.config import ModelConfig
from emojax.runs import InputError, read_jsonl, write_json
from emojax.runs.stage_record import finished_summary, mark_finished
from emojax.stages import modulate, tuning, upstream
from emojax.stages.context import StageContext
from emojax.stages.judged import write_judged_outputs

STAGE = "random_circuit_test"
MIN_DRAWS = 5


def _draw_kind(members: Sequence[Sequence[int]], available: int, rng: np.random.Generator
               ) -> tuple[tuple[tuple[int, ...], ...], int]:
    """Per-layer random members outside `members` (same count per layer where the layer has room),
    and how many had to move to another layer."""
    free = [np.setdiff1d(np.arange(available), np.asarray(m, int)) for m in members]
    counts = [min(len(m), len(f)) for m, f in zip(members, free)]
    short = [len(m) - c for m, c in zip(members, counts)]
    for layer, missing in enumerate(short):
        for _ in range(missing):
            room = [k for k in range(len(members)) if counts[k] < len(free[k])]
            if not room:
                raise InputError("a random circuit disjoint from the true one does not fit: too few non-members")
            counts[min(room, key=lambda k: (abs(k - layer), k))] += 1
    drawn = tuple(tuple(sorted(int(j) for j in rng.choice(f, size=c, replace=False))) for f, c in zip(free, counts))
    return drawn, sum(short)


def random_circuit(circuit: Circuit, config: ModelConfig, rng: np.random.Generator) -> tuple[Circuit, int]:
    """A random circuit of `circuit`'s per-layer sizes disjoint from it; (circuit, members relocated)."""
    neurons, moved_neurons = _draw_kind(circuit.neurons, config.d_ff, rng)
    heads, moved_heads = _draw_kind(circuit.heads, config.n_heads, rng)
    return Circuit(circuit.emotion, neurons, heads), moved_neurons + moved_heads


def draw_circuits(circuits: dict[str, Circuit], config: ModelConfig, seed: int, draws: int
                  ) -> list[tuple[dict[str, Circuit], dict[str, int]]]:
    """`draws` seeded sets of random circuits, one per emotion: [(circuits, relocated per emotion)]."""
    out = []
    for d in range(draws):
        drawn = {e: random_circuit(circuits[e], config, np.random.default_rng([seed, d, i]))
                 for i, e in enumerate(EMOTIONS)}
        out.append(({e: c for e, (c, _) in drawn.items()}, {e: moved for e, (_, moved) in drawn.items()}))
    return out


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [v for v in values if v is not None]
    return {"mean": float(np.mean(kept)) if kept else None,
            "sd": float(np.std(kept, ddof=1)) if len(kept) > 1 else None, "draws": list(values)}


def run(ctx: StageContext) -> dict[str, Any]:
    """The control draws on the chosen test groups; summary with mean and sd over draws."""
    draws = ctx.preset.random_draws
    if draws < MIN_DRAWS:
        raise InputError(f"the random-circuit control needs at least {MIN_DRAWS} draws, preset {ctx.preset.name} "
                         f"has {draws}")
    scales = upstream.modulation_scales(ctx)
    chosen = tuning.spread_groups(ctx.test, ctx.preset.random_groups)
    stamp = {**modulate.fingerprint(ctx, STAGE, ctx.test, scales), "draws": draws, "seed": ctx.settings.seed,
             "groups": [g.key for g in chosen]}
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    circuits = upstream.circuits(ctx)
    drawn = draw_circuits(circuits, ctx.config, ctx.settings.seed, draws)
    write_json(out / "draws.json", [{"relocated": moved, "circuits": {e: c.to_record() for e, c in sets.items()}}
                                    for sets, moved in drawn])
    items = [item for g in chosen for item in g.items]
    edits = modulate.stacked_edits([sets for sets, _ in drawn], [scales] * draws, upstream.directions(ctx), ctx.config)
    records, _ = modulate.modulated_generation(
        ctx, out, items * draws, edits, np.repeat(np.arange(draws), len(items)), stamp, "generate",
        {"scales": dict(zip(EMOTIONS, scales.tolist())), "control": "random circuit"})
    per_draw = []
    for d in range(draws):
        mine = records[d * len(items):(d + 1) * len(items)]
        for record in mine:
            record["meta"]["draw"] = d
        sub = out / f"draw_{d}"
        sub.mkdir(exist_ok=True)
        write_judged_outputs(sub, mine, accuracy_tables(mine), f"Random circuits, draw {d} (test subsample)")
        per_draw.append(tuning.measures(mine))
    keys = {i.key for i in items}
    true = [r for r in read_jsonl(ctx.run.path / modulate.STAGE / "records.jsonl") if r["key"] in keys]
    if len(true) != len(items):
        raise InputError(f"{ctx.run.path / modulate.STAGE}: circuit modulation did not judge every control item "
                         f"({len(true)} of {len(items)})")
    true_measures = tuning.measures(true)
    summary = {"stage": STAGE, "draws": draws, "items": len(items), "groups": [g.key for g in chosen],
               "scales": dict(zip(EMOTIONS, scales.tolist())), "seed": ctx.settings.seed,
               "relocated": [moved for _, moved in drawn],
               "fluent_accuracy": _spread([m["fluent_accuracy"]["overall"] for m in per_draw]),
               "accuracy": _spread([m["accuracy"]["overall"] for m in per_draw]),
               "true_circuit": {"fluent_accuracy": true_measures["fluent_accuracy"]["overall"],
                                "accuracy": true_measures["accuracy"]["overall"]}}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary
