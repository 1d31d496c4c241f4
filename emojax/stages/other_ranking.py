"""Circuit modulation of the test split with the circuits of the ranking not chosen (analytic vs causal).

When the causal scans ran, the circuit stage builds both rankings' circuits (`circuit/` for the
chosen one, `circuit/other_ranking/` for the other) with the same budget and allocation. This stage
modulates every test item with the other ranking's circuits at the same lambda_e as modulate_test,
so the report can show both rankings side by side on the same items. Without the causal scans it
has nothing to do and says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emojax.data import EMOTIONS, items as all_items
from emojax.evaluation.accuracy import overall_fraction
from emojax.runs import read_json
from emojax.runs.stage_record import finished_summary, mark_finished
from emojax.stages import circuit_stage, modulate, tuning, upstream
from emojax.stages.context import StageContext
from emojax.stages.judged import write_judged_outputs

STAGE = "modulate_other_ranking_test"


def run(ctx: StageContext) -> dict[str, Any]:
    subdir = circuit_stage.OTHER_RANKING_DIR
    if not (ctx.run.path / circuit_stage.STAGE / subdir).is_dir():
        return {"stage": STAGE, "skipped": "only one circuit ranking was built (the causal scans did not run)"}
    ranking = read_json(ctx.run.path / circuit_stage.STAGE / subdir / f"{EMOTIONS[0]}.json").get("ranking")
    scales = upstream.modulation_scales(ctx)
    stamp = modulate.fingerprint(ctx, STAGE, ctx.test, scales, circuit_subdir=subdir)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    items = all_items(ctx.test)
    edits = modulate.stacked_edits([upstream.circuits(ctx, subdir)], [scales], upstream.directions(ctx), ctx.config)
    records, tables = modulate.modulated_generation(
        ctx, out, items, edits, np.zeros(len(items)), stamp, "generate",
        {"scales": dict(zip(EMOTIONS, scales.tolist())), "ranking": ranking})
    write_judged_outputs(out, records, tables, f"Circuit modulation, {ranking} ranking (test split)")
    summary = {"stage": STAGE, "ranking": ranking, "items": len(records), "scales": dict(zip(EMOTIONS, scales.tolist())),
               "accuracy": tables["overall"], "accuracy_fraction": overall_fraction(tables),
               "fluent_accuracy_fraction": tuning.measures(records)["fluent_accuracy"]["overall"]}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary
