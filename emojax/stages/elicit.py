"""S1: prompted elicitation, judging and acceptance; the prompting baseline (method.md S1, §6, §7).

Every item (record, valence, emotion) of a split gets the emotion prompt of §4.1 and a greedy reply
with the "prompting" settings of §6 (max_new_tokens from the preset, no penalties); the judge marks
whether the reply's style matches the emotion. On the analysis split the matched items are the
accepted set that feeds S2, S4, S5 and S6; on the evaluation split the accuracy is the prompting
baseline.

Outputs in `elicit_{split}/`: records.jsonl (§3.3), accepted.jsonl, rejected.jsonl, accuracy.json,
accuracy.md, and the resumable generation and judge chunks.
"""
from __future__ import annotations

from typing import Any

from emojax.data import items as all_items
from emojax.evaluation.accuracy import overall_fraction
from emojax.method.prompts import emotion_messages
from emojax.runs import InputError, read_jsonl
from emojax.runs.stage_record import finished_summary, judge_identity, mark_finished, model_hash, records_digest
from emojax.stages.context import StageContext
from emojax.stages.judged import decoding_for, run_judged_generation, write_judged_outputs

SPLITS = ("train", "test")


def stage_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"elicitation split {split!r}; expected one of {SPLITS}")
    return f"elicit_{split}"


def split_records(ctx: StageContext, split: str):
    stage_name(split)
    records = ctx.train if split == "train" else ctx.test
    if not records:
        raise InputError(f"the {split} split is empty: nothing to elicit")
    return records


def fingerprint(ctx: StageContext, split: str) -> dict[str, Any]:
    decoding = decoding_for("prompting", ctx.preset.max_new_tokens, ctx.settings.harmonised, ctx.model.config)
    return {"stage": "elicit", "split": split, "dataset": records_digest(split_records(ctx, split)),
            "model": model_hash(ctx), "decoding": decoding.to_json(), "judge": judge_identity(ctx.judge),
            "date": ctx.settings.date_string, "batch_size": ctx.preset.batch_size}


def run(ctx: StageContext, split: str = "train") -> dict[str, Any]:
    """Elicit, judge and tabulate every item of `split`; returns the stage summary."""
    name = stage_name(split)
    stamp = fingerprint(ctx, split)
    done = finished_summary(ctx.run, name, stamp)
    if done is not None:
        return done
    items = all_items(split_records(ctx, split))
    decoding = decoding_for("prompting", ctx.preset.max_new_tokens, ctx.settings.harmonised, ctx.model.config)
    out = ctx.run.stage(name)
    records, tables = run_judged_generation(ctx, out, items, [emotion_messages(i) for i in items], decoding,
                                            fingerprint=stamp, meta={"condition": "prompting"})
    write_judged_outputs(out, records, tables, f"Prompting accuracy ({split} split)")
    summary = {"stage": name, "items": len(records), "accuracy": tables["overall"],
               "accuracy_fraction": overall_fraction(tables),
               "per_emotion": {e: c["accuracy"] for e, c in tables["per_emotion"].items()}}
    mark_finished(ctx.run, name, stamp, summary)
    return summary


def load_records(ctx: StageContext, split: str = "train") -> list[dict[str, Any]]:
    """The judged records of a finished elicitation stage (checked to cover the split's items)."""
    name = stage_name(split)
    if not ctx.run.is_done(name):
        raise InputError(f"{ctx.run.path / name}: the elicitation of the {split} split has not finished; run "
                         f"`python -m experiments.elicit --split={split}` on this run directory first")
    records = read_jsonl(ctx.run.path / name / "records.jsonl")
    expected = {i.key for i in all_items(split_records(ctx, split))}
    found = {r["key"] for r in records}
    if found != expected:
        raise InputError(f"{ctx.run.path / name / 'records.jsonl'}: its items do not match the {split} split "
                         f"({len(found - expected)} unknown, {len(expected - found)} missing)")
    return records


def accepted_keys(records: list[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in records if r["judge"]["match"] == 1}
