"""What an intervention costs generation, by which of its groups are on.

The `generate` job (32 chat prompts, 64 new tokens, greedy) run plain and under interventions whose
unused groups are off (selector "none", left out of the program) or on at identity values. On a GPU a
decode step is bound by kernel launches, so an identity edit costs its operations; on CPU the
products dominate and the difference is small. Runs are interleaved; `speedup` of each variant is
plain over its time.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from emojax.model.interventions import Intervention
from experiments.bench.common import BenchContext, peak_rss_mb, time_interleaved
from experiments.bench.generate import bench_prompts, circuit_style_edits, emojax_generation


def _variants(ctx: BenchContext, rows: int) -> dict[str, Any]:
    c = ctx.config
    circuit = circuit_style_edits(c, rows)  # neurons on P_last, heads on P_all, residual group off
    steer_add = np.random.default_rng(0).normal(0, 0.1, (c.n_layers, rows, 2, c.d_model))
    steering = Intervention.identity(c, resid_where="from_last", neuron_where="none", head_where="none").replace(
        resid_add_rms=jnp.asarray(steer_add, jnp.float32))
    return {"plain": None,
            "circuit": circuit,
            "circuit_resid_identity": circuit.with_where(resid="all"),
            "steering": steering,
            "steering_others_identity": steering.with_where(neuron="from_last", head="all")}


def bench_generate_edit_cost(ctx: BenchContext) -> dict[str, Any]:
    tokens, mask = bench_prompts(ctx)
    runs = {name: emojax_generation(ctx, tokens, mask, iv) for name, iv in _variants(ctx, tokens.shape[0]).items()}
    timings = time_interleaved(runs, ctx.repeats)
    plain = timings.pop("plain")
    result: dict[str, Any] = {"emojax_s": plain.median_s, "baseline_s": None, "speedup": None,
                              "batch": int(tokens.shape[0]), "plain_runs_s": list(plain.runs_s)}
    for name, timing in timings.items():
        result[f"{name}_s"] = timing.median_s
        result[f"{name}_speedup"] = plain.median_s / timing.median_s
    result["peak_rss_mb"] = peak_rss_mb()
    return result
