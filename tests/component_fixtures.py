"""A run directory whose capture and directions stages are done, on the tiny random model, for the
tests of the components, validation and causal stages.

The capture holds every item of the split except a few (so some groups are incomplete and the
emotions have different counts), captured with the capture stage's own batched forward; the
directions are computed from it with the directions stage's own code.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from emojax.data import items
from emojax.method.prompts import emotion_messages
from emojax.runs import write_json, write_npz
from emojax.runs.stage_record import mark_finished, model_hash
from emojax.stages import capture, directions_stage
from emojax.stages.context import StageContext
from stage_fixtures import TINY_PRESET, make_context

DROPPED = {1, 8}   # item indices left out of the capture: sadness of group 0, happiness of group 1


def write_upstream(ctx: StageContext, dropped: set[int] = DROPPED) -> dict[str, np.ndarray]:
    """Capture and directions outputs for ctx.train; returns the captured activations."""
    chosen = [item for n, item in enumerate(items(ctx.train)) if n not in dropped]
    selection = capture.Selection(tuple(chosen), np.ones(len(chosen), bool), "accepted", "accepted",
                                  capture.complete_group_count(chosen), None)
    out = ctx.run.stage(capture.STAGE)
    acts = capture.capture_prompts(ctx.model, [emotion_messages(i) for i in chosen], directory=out,
                                   chunk_size=ctx.preset.batch_size, date_string=ctx.settings.date_string,
                                   fingerprint="test")
    table = capture.item_table(ctx.train, selection)
    write_json(out / "items.json", table)
    write_npz(out / "activations.npz", acts, meta={"model_hash": model_hash(ctx)})
    mark_finished(ctx.run, capture.STAGE, {"test": 1}, {"rule": "accepted"})
    vectors = directions_stage.compute_vectors(acts, directions_stage.groups_of(table), ctx.hparams.ref_layers)
    write_npz(ctx.run.stage(directions_stage.STAGE) / "directions.npz", vectors, meta={"model_hash": model_hash(ctx)})
    mark_finished(ctx.run, directions_stage.STAGE, {"test": 1}, {})
    return acts


def tiny_context(tmp_path: Path, train=None, model=None, **preset_changes) -> StageContext:
    """A tiny-model context with capture and directions done (train split, model and preset fields may
    be changed)."""
    ctx = make_context(tmp_path, model=model, train=train, preset=dataclasses.replace(TINY_PRESET, **preset_changes))
    write_upstream(ctx)
    return ctx
