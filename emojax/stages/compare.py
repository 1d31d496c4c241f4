"""Prompting vs steering vs circuit modulation on the evaluation split, in one table (method.md §7).

Reads the accuracy tables and records of `elicit_test` (prompting, S1), `steer_test` (steering, S3)
and `modulate_test` (circuit modulation, S7), the neutral baseline's false-match rate, the
random-circuit control, the other circuit ranking and the two tuning searches on train when they
ran, and writes `compare/`:
    comparison.json   per method: judged and fluent accuracy overall, per emotion, per valence
                      (percent and counts) with Wilson 95% intervals, the fluent fraction, McNemar's
                      paired tests (circuit vs steering, circuit vs prompting, on fluent_match), the
                      controls, the tuned doses and example replies at those doses
    comparison.md     the same as Markdown tables
    accuracy.png      grouped bars of fluent accuracy per category
    dose_response.png fluent accuracy and fluent fraction against the dose on train, per method
A method whose stage did not run is listed as missing rather than failing the comparison.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from emojax.data import EMOTIONS, VALENCES
from emojax.evaluation import figures
from emojax.evaluation.significance import cell_intervals, fraction, paired_test
from emojax.runs import hash_path, read_jsonl, write_json, write_text
from emojax.runs.stage_record import finished_summary, judge_identity, mark_finished
from emojax.stages import circuit_stage, modulate, other_ranking, random_circuits, steer, upstream
from emojax.stages.context import StageContext

STAGE = "compare"
METHODS = {"prompting": "elicit_test", "steering": "steer_test", "circuit": "modulate_test"}
BASELINE = ("neutral baseline (false match)", "baseline_test")
CATEGORIES = ("overall",) + EMOTIONS + VALENCES
EXAMPLE_CHARS = 240
PAIRS = {"circuit_vs_steering": ("circuit", "steering"), "circuit_vs_prompting": ("circuit", "prompting")}
SWEEPS = {"steering": steer.SWEEP_STAGE, "circuit": modulate.SWEEP_STAGE}
CONTROLS = (random_circuits.STAGE, other_ranking.STAGE)


def flatten(tables: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{category: cell} over overall, the six emotions and the three valences."""
    flat = {"overall": tables["overall"]}
    flat.update({e: tables["per_emotion"][e] for e in EMOTIONS})
    flat.update({v: tables["per_valence"][v] for v in VALENCES})
    return flat


def comparison_table(tables: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """{method: {category: cell} or None}, in the order given."""
    return {method: None if t is None else flatten(t) for method, t in tables.items()}


def _cell_text(cell: Mapping[str, Any] | None, field: str = "matched") -> str:
    if cell is None or field not in cell or not cell["total"]:
        return "—"
    return f"{100 * cell[field] / cell['total']:.2f} ({cell[field]}/{cell['total']})"


def markdown_table(table: Mapping[str, Mapping[str, Any] | None], field: str = "matched") -> str:
    """One row per method, one column per category: `field` (matched or fluent_matched) in percent."""
    lines = ["| method | " + " | ".join(CATEGORIES) + " |", "|---|" + "---|" * len(CATEGORIES)]
    for method, cells in table.items():
        texts = ["not run"] + [""] * (len(CATEGORIES) - 1) if cells is None else \
            [_cell_text(cells[c], field) for c in CATEGORIES]
        lines.append(f"| {method} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _interval_text(interval: Sequence[float] | None) -> str:
    return "—" if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def headline_table(table: Mapping[str, Mapping[str, Any] | None], intervals: Mapping[str, Any],
                   fluent_fraction: Mapping[str, float | None]) -> str:
    """Judged and fluent accuracy overall with 95% Wilson intervals, and the fluent fraction."""
    lines = ["| method | judged accuracy % | 95% CI | fluent accuracy % | 95% CI | fluent replies % |",
             "|---|---|---|---|---|---|"]
    for method, cells in table.items():
        if cells is None:
            lines.append(f"| {method} | not run | | | | |")
            continue
        ci = intervals[method]["overall"]
        share = fluent_fraction[method]
        lines.append(f"| {method} | {_cell_text(cells['overall'])} | {_interval_text(ci['accuracy'])} | "
                     f"{_cell_text(cells['overall'], 'fluent_matched')} | {_interval_text(ci['fluent_accuracy'])} | "
                     f"{'—' if share is None else f'{100 * share:.1f}'} |")
    return "\n".join(lines) + "\n"


def tests_markdown(tests: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| pair | pairs | first only | second only | exact p | mid-p |", "|---|---|---|---|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {t['pairs']} | {t['b']} | {t['c']} | {t['exact_p']:.3g} | "
              f"{t['mid_p']:.3g} |" for name, t in tests.items()]
    return "\n".join(lines) + "\n"


def controls_markdown(random: Mapping[str, Any] | None, rankings: Mapping[str, Any],
                      baseline: Mapping[str, Any] | None) -> str:
    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.2f}"

    lines = []
    if random is not None:
        fa = random["fluent_accuracy"]
        lines += [f"Random circuits ({random['draws']} draws, same per-layer counts, disjoint from the true "
                  f"circuits, own Delta entries, lambda of the test run; {random['items']} test items): fluent "
                  f"accuracy {pct(fa['mean'])}% (sd {pct(fa['sd'])}; draws "
                  f"{', '.join(pct(v) for v in fa['draws'])}) against {pct(random['true_circuit']['fluent_accuracy'])}% "
                  f"for the true circuits on the same items; judged accuracy {pct(random['accuracy']['mean'])}% "
                  f"against {pct(random['true_circuit']['accuracy'])}%.", ""]
    if len(rankings) > 1:
        lines += ["| circuit ranking | judged accuracy % | fluent accuracy % | 95% CI (fluent) |", "|---|---|---|---|"]
        lines += [f"| {name} | {pct(r['accuracy'])} | {pct(r['fluent_accuracy'])} | {_interval_text(r['ci95'])} |"
                  for name, r in rankings.items()]
        lines.append("")
    if baseline is not None:
        lines += [f"Neutral baseline judged against every target (false match): {_cell_text(baseline['overall'])}%.", ""]
    return "\n".join(lines)


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
        lines += [f"| {m} | {'match' if r['match'] else 'no match'} | "
                  f"{'—' if r['fluent'] is None else ('yes' if r['fluent'] else 'no')} | {_quote(r['text'])} |"
                  for m, r in ex["replies"].items()]
        lines.append("")
    return "\n".join(lines)


def fingerprint(ctx: StageContext) -> dict[str, Any]:
    """The done.json of every compared stage: a stage that ran again changes the comparison."""
    stages = list(METHODS.values()) + [BASELINE[1], *SWEEPS.values(), *CONTROLS]
    return {"stage": STAGE, **{s: hash_path(p) if (p := ctx.run.path / s / "done.json").is_file() else None
                               for s in stages}}


def circuit_rankings(ctx: StageContext, circuit_cells: Mapping[str, Any] | None) -> dict[str, Any]:
    """{ranking: {accuracy, fluent_accuracy, ci95 of fluent accuracy}} for the chosen ranking and,
    when it ran, the other one, on the whole test split."""
    circuit = upstream.stage_summary(ctx, circuit_stage.STAGE) or {}
    other = upstream.stage_summary(ctx, other_ranking.STAGE)
    cells = {circuit.get("ranking", ctx.settings.circuit_ranking): (circuit_cells, modulate.STAGE)}
    if other is not None:
        cells[other["ranking"]] = (upstream.accuracy(ctx, other_ranking.STAGE)["overall"], other_ranking.STAGE)
    return {name: {"accuracy": fraction(cell, "matched", stage), "fluent_accuracy": fraction(cell, "fluent_matched", stage),
                   "ci95": cell_intervals(cell, stage)["fluent_accuracy"]}
            for name, (cell, stage) in cells.items() if cell is not None}


def tuned_doses(ctx: StageContext) -> dict[str, Any]:
    """The doses the test runs used, and whether they are per emotion."""
    steering = upstream.stage_summary(ctx, METHODS["steering"]) or {}
    circuit = upstream.stage_summary(ctx, METHODS["circuit"]) or {}
    tuned = {"steer_alpha": steering.get("alpha"), "steer_alpha_source": steering.get("alpha_source"),
             "modulation_scale": circuit.get("lambda"), "modulation_scale_source": circuit.get("lambda_source")}
    if ctx.settings.per_emotion_dose:
        tuned["per_emotion"] = True
    return tuned


def run(ctx: StageContext) -> dict[str, Any]:
    """The three-way table with intervals and paired tests, the controls, example replies and plots."""
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
    ran = {m: cells for m, cells in table.items() if cells is not None}
    sources = {m: str(ctx.run.path / METHODS[m] / "accuracy.json") for m in ran}
    intervals = {m: {c: cell_intervals(cells[c], sources[m]) for c in CATEGORIES} for m, cells in ran.items()}
    fluent_accuracy = {m: {c: fraction(cells[c], "fluent_matched", sources[m]) for c in CATEGORIES}
                       for m, cells in ran.items()}
    fluent_share = {m: fraction(cells["overall"], "fluent", sources[m]) for m, cells in ran.items()}
    tests = {name: paired_test(records[a], records[b]) for name, (a, b) in PAIRS.items()
             if a in records and b in records}
    random = upstream.stage_summary(ctx, random_circuits.STAGE)
    rankings = circuit_rankings(ctx, ran.get("circuit", {}).get("overall"))
    sweeps = {m: summary for m, stage in SWEEPS.items() if (summary := upstream.stage_summary(ctx, stage))}
    examples = example_replies(records)
    full = {**table, BASELINE[0]: None if baseline is None else flatten(baseline)}
    comparison = {
        "split": "test", "categories": list(CATEGORIES), "accuracy": full, "fluent_accuracy": fluent_accuracy,
        "ci95": intervals, "fluent_fraction": fluent_share, "mcnemar": tests, "random_circuit": random,
        "circuit_rankings": rankings, "tuned": tuned_doses(ctx),
        "baseline_false_match": None if baseline is None else fraction(baseline["overall"], "matched", BASELINE[1]),
        "examples": examples, "judge": judge_identity(ctx.judge)}
    write_json(out / "comparison.json", comparison)
    markdown = ["## Emotion-expression accuracy, test split", "",
                "Fluent accuracy counts a reply only when the judge matched it to the target AND found it "
                "fluent; intervals are Wilson 95%.", "", headline_table(table, intervals, fluent_share),
                "### Fluent accuracy per category (%)", "", markdown_table(table, "fluent_matched"),
                "### Judged accuracy per category (%)", "", markdown_table(full),
                "Prompting carries the emotion in the system prompt; steering and circuit modulation use "
                "the neutral prompt, at the doses tuned on the train split "
                f"(steering alpha {comparison['tuned']['steer_alpha']}, circuit lambda "
                f"{comparison['tuned']['modulation_scale']}). The baseline row is the unmodified neutral reply "
                "judged against each target emotion.", ""]
    if tests:
        markdown += ["### McNemar's paired test on fluent_match (same items)", "", tests_markdown(tests)]
    markdown += ["### Controls", "", controls_markdown(random, rankings, baseline),
                 "## Example replies at the chosen doses", "", examples_markdown(examples)]
    write_text(out / "comparison.md", "\n".join(markdown))
    plotted = {m: {c: 100 * v for c, v in values.items() if v is not None} for m, values in fluent_accuracy.items()}
    if plotted:
        figures.accuracy_bars(out / "accuracy.png", plotted, CATEGORIES, "Fluent accuracy, test split")
    if sweeps:
        figures.dose_response(out / "dose_response.png", sweeps)
    summary = {"stage": STAGE, "overall": {m: None if t is None else t["overall"]["accuracy"] for m, t in full.items()},
               "missing": [m for m, t in full.items() if t is None]}
    mark_finished(ctx.run, STAGE, stamp, summary)
    return summary
