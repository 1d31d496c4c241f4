"""The fused last-token capture of S2, S4 and S5 (method.md S2, §12 T9).

One batched forward pass over the emotion prompts of the selected SEV items returns, at t* (the last
prompt token), every layer's resid_mid, resid_post, z (o-projection input) and g (down-projection
input), and the post-norm `final` state. Directions (S2), neuron and head scores (S4) and difference
vectors (S5) are all computed from these arrays, so no later stage runs the prompts again.

Which items: the directions rule. "accepted" (the paper, D2) takes the judge-accepted items, of which
complete groups feed the directions; "all" takes every prompted item (directions are read at t*,
before any reply, so they exist for every item). When "accepted" leaves fewer than
`settings.min_complete_groups` complete groups, the stage falls back to "all" with a warning. The rule
that produced the arrays is stored in items.json and in the npz metadata.

Outputs in `capture/`: activations.npz {resid_mid, resid_post [N, L, D], z [N, L, H*Dh], g [N, L, F],
final [N, D]}, items.json, and the resumable forward chunks.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from absl import logging

from emojax.data import EMOTIONS, VALENCES, Item, SevRecord, items as all_items
from emojax.method.prompts import emotion_messages, tokenize_prompts
from emojax.model.forward import forward
from emojax.model.taps import TapSpec
from emojax.runs import ChunkedJob, InputError, check_array_file, read_json, write_json, write_npz
from emojax.runs.stage_record import digest, finished_summary, mark_finished, model_hash, records_digest
from emojax.stages.context import StageContext
from emojax.stages.elicit import accepted_keys, load_records
from emojax.stages.judged import PAD_MULTIPLE

STAGE = "capture"
RULES = ("accepted", "all")
CAPTURE_TAPS = TapSpec(points=("resid_mid", "resid_post", "final", "z", "g"), at="last")


@dataclasses.dataclass(frozen=True)
class Selection:
    """The items whose emotion prompts are captured, and why."""

    items: tuple[Item, ...]
    accepted: np.ndarray          # [N] bool, the S1 verdict of each selected item
    rule: str                     # the rule that produced the selection: "accepted" or "all"
    requested_rule: str
    complete_groups: int          # complete groups among the selected items
    fallback: str | None          # why "accepted" fell back to "all", or None


def complete_group_count(items: Sequence[Item]) -> int:
    """Groups (record, valence) with all six emotions among `items`."""
    seen: dict[tuple[str, str], set[str]] = {}
    for item in items:
        seen.setdefault((item.skeleton_id, item.valence), set()).add(item.emotion)
    return sum(len(emotions) == len(EMOTIONS) for emotions in seen.values())


def select_items(records: Sequence[SevRecord], accepted: set[str], rule: str,
                 min_complete_groups: int) -> Selection:
    """Apply the directions rule to the items of `records`, given the keys S1 accepted."""
    if rule not in RULES:
        raise InputError(f"directions rule {rule!r}; expected one of {RULES}")
    everything = all_items(records)
    if rule == "accepted":
        chosen = tuple(i for i in everything if i.key in accepted)
        complete = complete_group_count(chosen)
        if complete >= min_complete_groups:
            return Selection(chosen, np.ones(len(chosen), bool), "accepted", rule, complete, None)
        fallback = (f"only {complete} complete groups of accepted items (minimum {min_complete_groups}); "
                    "using every prompted item instead")
        logging.warning("directions rule 'accepted': %s", fallback)
    else:
        fallback = None
    flags = np.array([i.key in accepted for i in everything], bool)
    return Selection(tuple(everything), flags, "all", rule, complete_group_count(everything), fallback)


def item_table(records: Sequence[SevRecord], selection: Selection) -> dict[str, Any]:
    """items.json: per selected item its key, emotion index, group id, scenario id, accepted flag."""
    record_index = {r.skeleton_id: k for k, r in enumerate(records)}
    return {
        "rule": selection.rule, "requested_rule": selection.requested_rule, "fallback": selection.fallback,
        "complete_groups": selection.complete_groups, "n_items": len(selection.items),
        "keys": [i.key for i in selection.items],
        "emotion": [EMOTIONS.index(i.emotion) for i in selection.items],
        "group": [record_index[i.skeleton_id] * len(VALENCES) + VALENCES.index(i.valence)
                  for i in selection.items],
        "scenario": [record_index[i.skeleton_id] for i in selection.items],
        "accepted": selection.accepted.tolist(),
    }


def capture_batch(params: Any, tokens: np.ndarray, mask: np.ndarray, config: Any) -> dict[str, np.ndarray]:
    """Last-token taps of one left-padded batch as float32 numpy arrays."""
    out = forward(params, jnp.asarray(tokens), config=config, mask=jnp.asarray(mask), taps=CAPTURE_TAPS,
                  logits="none")
    return {name: np.asarray(value, np.float32) for name, value in out.taps.items()}


def capture_prompts(model: Any, prompts: Sequence[Any], *, directory: Path, chunk_size: int,
                    date_string: str, fingerprint: Any) -> dict[str, np.ndarray]:
    """Taps of every prompt at its last token, in resumable chunks of one shape (rows and width)."""
    batch = tokenize_prompts(model.tokenizer, prompts, date_string=date_string, pad_multiple=PAD_MULTIPLE)
    n = len(prompts)
    size = min(chunk_size, n)
    spec = {"job": fingerprint, "rows": size,
            "prompts": hashlib.sha256(batch.tokens.tobytes() + batch.mask.tobytes()).hexdigest()}

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        rows = np.minimum(np.arange(start, start + size), n - 1)
        taps = capture_batch(model.params, batch.tokens[rows], batch.mask[rows], model.config)
        return {name: value[: stop - start] for name, value in taps.items()}

    job = ChunkedJob(directory, f"forward-{digest(spec)}", n, size, spec)
    return job.run(compute, desc="capture")


def fingerprint(ctx: StageContext, elicit_hash: str) -> dict[str, Any]:
    return {"stage": STAGE, "dataset": records_digest(ctx.train), "model": model_hash(ctx),
            "elicit": elicit_hash, "rule": ctx.settings.directions_rule,
            "min_complete_groups": ctx.settings.min_complete_groups, "date": ctx.settings.date_string,
            "batch_size": ctx.preset.batch_size}


def run(ctx: StageContext) -> dict[str, Any]:
    """Capture the emotion-prompt states of the train items selected by the directions rule."""
    elicited = load_records(ctx, "train")
    stamp = fingerprint(ctx, digest([(r["key"], r["judge"]["match"]) for r in elicited]))
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    selection = select_items(ctx.train, accepted_keys(elicited), ctx.settings.directions_rule,
                             ctx.settings.min_complete_groups)
    out = ctx.run.stage(STAGE)
    arrays = capture_prompts(ctx.model, [emotion_messages(i) for i in selection.items], directory=out,
                             chunk_size=ctx.preset.batch_size, date_string=ctx.settings.date_string,
                             fingerprint=stamp)
    table = item_table(ctx.train, selection)
    write_json(out / "items.json", table)
    write_npz(out / "activations.npz", arrays,
              meta={"model_hash": model_hash(ctx), "model_name": ctx.model.name, "rule": selection.rule,
                    "requested_rule": selection.requested_rule, "fallback": selection.fallback,
                    "n_items": len(selection.items), "complete_groups": selection.complete_groups,
                    "dtype": "float32", "position": "t* (last prompt token)"})
    summary = {"stage": STAGE, "rule": selection.rule, "requested_rule": selection.requested_rule,
               "fallback": selection.fallback, "items": len(selection.items),
               "accepted_items": int(selection.accepted.sum()), "complete_groups": selection.complete_groups}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary


def load(ctx: StageContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(activations, items.json) of the finished capture stage, checked against the current model."""
    path = ctx.run.path / STAGE
    if not ctx.run.is_done(STAGE):
        raise InputError(f"{path}: the capture stage has not finished; run `python -m experiments.directions` "
                         "on this run directory")
    table = read_json(path / "items.json")
    n, cfg = table["n_items"], ctx.config
    arrays = check_array_file(path / "activations.npz", {
        "resid_mid": (n, cfg.n_layers, cfg.d_model), "resid_post": (n, cfg.n_layers, cfg.d_model),
        "final": (n, cfg.d_model), "z": (n, cfg.n_layers, cfg.q_dim), "g": (n, cfg.n_layers, cfg.d_ff)},
        model_hash(ctx))
    return arrays, table
