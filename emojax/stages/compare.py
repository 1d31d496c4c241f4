"""Prompting vs steering vs circuit modulation on the evaluation split, in one table (method.md §7).

Reads the accuracy tables and records of `elicit_test` (prompting, S1), `steer_test` (steering, S3)
and `modulate_test` (circuit modulation, S7), plus the neutral baseline's false-match rate when it
ran, and writes `compare/`:
    comparison.json   accuracy per method: overall, per emotion, per valence (percent and counts), judged
                      and fluent (judged a match and fluent)
    comparison.md     the same as a Markdown table, with example replies of one scenario per emotion
    accuracy.png      grouped bars per category
A method whose stage did not run is listed as missing rather than failing the comparison.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from emojax.data import EMOTIONS, VALENCES
from emojax.runs import hash_path, read_jsonl, write_json, write_text
from emojax.stages import figures, upstream
from emojax.stages.accuracy import fluent_text, judged_text
from emojax.stages.context import StageContext
from emojax.stages.judged import finished_summary, judge_identity, mark_finished

STAGE = "compare"
METHODS = {"prompting": "elicit_test", "steering": "steer_test", "circuit": "modulate_test"}
BASELINE = ("neutral baseline (false match)", "baseline_test")
CATEGORIES = ("overall",) + EMOTIONS + VALENCES
EXAMPLE_CHARS = 240
_FLUENT = {1: "yes", 0: "no"}


def flatten(tables: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{category: cell} over overall, the six emotions and the three valences."""
    flat = {"overall": tables["overall"]}
    flat.update({e: tables["per_emotion"][e] for e in EMOTIONS})
    flat.update({v: tables["per_valence"][v] for v in VALENCES})
    return flat


def comparison_table(tables: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """{method: {category: cell} or None}, in the order given."""
    return {method: None if t is None else flatten(t) for method, t in tables.items()}


def markdown_table(table: Mapping[str, Mapping[str, Any] | None]) -> str:
    """One row of judged and one of fluent accuracy (match and fluent) per method, with their counts."""
    lines = ["| method | accuracy | " + " | ".join(CATEGORIES) + " |", "|---|---|" + "---|" * len(CATEGORIES)]
    for method, cells in table.items():
        if cells is None:
            lines.append(f"| {method} | not run | " + " | ".join([""] * len(CATEGORIES)) + " |")
            continue
        lines.append(f"| {method} | judged | " + " | ".join(judged_text(cells[c]) for c in CATEGORIES) + " |")
        lines.append(f"| {method} | fluent | " + " | ".join(fluent_text(cells[c]) for c in CATEGORIES) + " |")
    return "\n".join(lines) + "\n"


def example_replies(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """For each emotion, the first item (in split order) that every available method generated:
    its scenario, event and each method's reply with the judge's verdict."""
    by_key = {m: {r["key"]: r for r in rs} for m, rs in records.items()}
    if not by_key:
        return []
    first = next(iter(records.values()))
    examples = []
    for emotion in EMOTIONS:
        for record in first:
            if record["emotion"] == emotion and all(record["key"] in keyed for keyed in by_key.values()):
                examples.append({
                    "key": record["key"], "emotion": emotion, "scenario": record["scenario"],
                    "event": record["event"],
                    "replies": {m: {"text": keyed[record["key"]]["gen_text"],
                                    "match": keyed[record["key"]]["judge"]["match"],
                                    "fluent": keyed[record["key"]]["judge"].get("fluent")}
                                for m, keyed in by_key.items()}})
                break
    return examples


def _quote(text: str) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def examples_markdown(examples: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for ex in examples:
        lines += [f"**{ex['emotion']}** — `{ex['key']}`: {_quote(ex['scenario'])} / {_quote(ex['event'])}", "",
                  "| method | judged | fluent | reply |", "|---|---|---|---|"]
        lines += [f"| {m} | {'match' if r['match'] else 'no match'} | {_FLUENT.get(r.get('fluent'), '—')} | "
                  f"{_quote(r['text'])} |" for m, r in ex["replies"].items()]
        lines.append("")
    return "\n".join(lines)


def fingerprint(ctx: StageContext) -> dict[str, Any]:
    """The done.json of every compared stage: a stage that ran again changes the comparison."""
    stages = list(METHODS.values()) + [BASELINE[1]]
    return {"stage": STAGE, **{s: hash_path(p) if (p := ctx.run.path / s / "done.json").is_file() else None
                               for s in stages}}


def run(ctx: StageContext) -> dict[str, Any]:
    """The three-way table, example replies and the accuracy plot."""
    stamp = fingerprint(ctx)
    done = finished_summary(ctx.run, STAGE, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(STAGE)
    tables = {method: upstream.accuracy(ctx, stage) for method, stage in METHODS.items()}
    baseline = upstream.accuracy(ctx, BASELINE[1])
    table = comparison_table(tables)
    records = {m: read_jsonl(ctx.run.path / s / "records.jsonl") for m, s in METHODS.items()
               if (ctx.run.path / s / "records.jsonl").is_file()}
    examples = example_replies(records)
    full = {**table, BASELINE[0]: None if baseline is None else flatten(baseline)}
    write_json(out / "comparison.json", {
        "split": "test", "categories": list(CATEGORIES), "accuracy": full, "examples": examples,
        "judge": judge_identity(ctx.judge)})
    markdown = ["## Emotion-expression accuracy, test split (%)", "", markdown_table(full),
                "Prompting carries the emotion in the system prompt; steering and circuit modulation use "
                "the neutral prompt. The baseline row is the unmodified neutral reply judged against each "
                "target emotion.", "", "## Example replies", "", examples_markdown(examples)]
    write_text(out / "comparison.md", "\n".join(markdown))
    plotted = {m: {c: cells[c]["accuracy"] for c in CATEGORIES if cells[c]["accuracy"] is not None}
               for m, cells in full.items() if cells is not None}
    if plotted:
        figures.accuracy_bars(out / "accuracy.png", plotted, CATEGORIES, "Emotion-expression accuracy, test split")
    summary = {"stage": STAGE, "overall": {m: None if t is None else t["overall"]["accuracy"] for m, t in full.items()},
               "missing": [m for m, t in full.items() if t is None]}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary
