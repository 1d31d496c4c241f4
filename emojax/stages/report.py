"""The run's report: `summary.json` (headline numbers) and `report.md` (tables and every plot written).

summary.json holds accuracy {prompting, steering, circuit} as overall fractions on the evaluated
split, fluent_accuracy (same keys: judged match AND fluent), ci95 {method: [low, high]} (Wilson 95%
of fluent accuracy), fluent_fraction {method}, mcnemar {circuit_vs_steering, circuit_vs_prompting}
(exact two-sided p on fluent_match), tuned {steer_alpha, modulation_scale, per_emotion when used},
random_circuit {mean, sd, draws} (fluent accuracy of the random-circuit control), circuit_variants
(the per-emotion choice among the preset's circuit variants, tuned on train: its candidates, choice,
judged and fluent accuracy with the Wilson interval, per-emotion fluent accuracy and McNemar tests
against steering and the run's circuit; None when that stage did not run), circuit_rankings,
overlap {neurons, heads} (mean Jaccard over the 15 emotion pairs), timings {stage: wall
seconds} and cpu_timings (process CPU seconds), the model, the datasets, the preset, the directions
rule and the judge. report.md shows the same numbers next to the paper's, then each stage's tables
and PNG plots, whichever the stages wrote.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from emojax.evaluation.accuracy import overall_fraction
from emojax.runs import read_json, write_json, write_text
from emojax.runs.stage_record import judge_identity, model_hash
from emojax.stages import upstream, variants
from emojax.stages.context import StageContext

SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"
TIMINGS_NAME = "timings.json"
ACCURACY_STAGES = {"prompting": "elicit_test", "steering": "steer_test", "circuit": "modulate_test"}
# method.md §9 and S6f: Llama-3.2-3B-Instruct on the official test split, judged by gpt-4o-mini.
PAPER = {"accuracy": {"prompting": 0.9896, "steering": 0.9122, "circuit": 0.9965},
         "accuracy_committed_circuit": 0.9941, "overlap": {"neurons": 0.056, "heads": 0.454}}
# Stage directories in pipeline order with a caption for their plots.
SECTIONS = (
    ("directions", "Direction geometry (S2)"),
    ("steer_test", "Direction steering (S3)"),
    ("steer_sweep_train", "Steering alpha tuned on the train split"),
    ("components", "Component rankings (S4a, S4b)"),
    ("validation", "Ablation and enhancement curves (S4c, §14.1)"),
    ("causal", "Causal scans and attribution (§14.2, §14.4)"),
    ("sublayer", "Sublayer causal influence (S6d)"),
    ("circuit", "Global emotion circuits (S6e, S6f)"),
    ("modulate_sweep_train", "Circuit lambda tuned on the train split"),
    ("modulate_other_ranking_test", "Circuit modulation with the other circuit ranking"),
    (variants.PIPELINE_TRAIN_STAGE, "Circuit variants tuned on the train split"),
    (variants.PIPELINE_TEST_STAGE, "Circuit variants chosen per emotion on train, on the test split"),
    ("compare", "Accuracy comparison"),
)


def read_timings(run_path: Path) -> dict[str, dict[str, float]]:
    """{"wall_seconds": {stage: s}, "cpu_seconds": {stage: s}} as the pipeline records them."""
    path = run_path / TIMINGS_NAME
    stored = read_json(path) if path.is_file() else {}
    return {"wall_seconds": stored.get("wall_seconds", {}), "cpu_seconds": stored.get("cpu_seconds", {})}


def _dataset(ctx: StageContext) -> dict[str, Any]:
    manifest = ctx.run.manifest["identity"]
    flags, inputs = manifest.get("flags", {}), manifest.get("inputs", {})
    return {split: {"spec": flags.get(split), "records": len(records),
                    "sha256": inputs.get(split, {}).get("sha256")}
            for split, records in (("train", ctx.train), ("test", ctx.test))}


def comparison_fields(run_path: Path) -> dict[str, Any]:
    """The headline statistics of compare/comparison.json (None where the comparison lacks them)."""
    path = run_path / "compare" / "comparison.json"
    comparison = read_json(path) if path.is_file() else {}
    fluent = comparison.get("fluent_accuracy", {})
    intervals = comparison.get("ci95", {})
    random = comparison.get("random_circuit")
    return {
        "fluent_accuracy": {m: fluent[m]["overall"] if m in fluent else None for m in ACCURACY_STAGES},
        "ci95": {m: intervals[m]["overall"]["fluent_accuracy"] if m in intervals else None for m in ACCURACY_STAGES},
        "fluent_fraction": {m: comparison.get("fluent_fraction", {}).get(m) for m in ACCURACY_STAGES},
        "mcnemar": {name: test["exact_p"] for name, test in comparison.get("mcnemar", {}).items()},
        "tuned": {k: v for k, v in comparison.get("tuned", {}).items() if not k.endswith("_source")},
        "random_circuit": None if random is None else {
            "mean": random["fluent_accuracy"]["mean"], "sd": random["fluent_accuracy"]["sd"],
            "draws": random["fluent_accuracy"]["draws"], "items": random["items"],
            "true_circuit": random["true_circuit"]["fluent_accuracy"]},
        "circuit_rankings": comparison.get("circuit_rankings", {}),
    }


def variant_fields(ctx: StageContext) -> dict[str, Any] | None:
    """The per-emotion choice among the circuit variants on the test split, or None when it did not run."""
    test = upstream.stage_summary(ctx, variants.PIPELINE_TEST_STAGE)
    train = upstream.stage_summary(ctx, variants.PIPELINE_TRAIN_STAGE)
    tables = upstream.accuracy(ctx, variants.PIPELINE_TEST_STAGE)
    if test is None or train is None or tables is None:
        return None
    paired = {"vs_steering": test["paired"]["steer_test"], "vs_circuit": test["paired"]["modulate_test"]}
    return {"candidates": [row["variant"] for row in train["rows"]], "rule": test["rule"], "choice": test["choice"],
            "accuracy": overall_fraction(tables), "fluent_accuracy": test["fluent_accuracy"],
            "ci95": test["interval"], "per_emotion": test["per_emotion"], "items": test["items"],
            "mcnemar": {name: {"won": t["b"], "lost": t["c"], "exact_p": t["exact_p"]} for name, t in paired.items()}}


def build_summary(ctx: StageContext, timings: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    accuracy = {}
    for method, stage in ACCURACY_STAGES.items():
        tables = upstream.accuracy(ctx, stage)
        accuracy[method] = None if tables is None else overall_fraction(tables)
    overlap_path = ctx.run.path / "circuit" / "overlap.json"
    overlap = read_json(overlap_path) if overlap_path.is_file() else None
    capture = ctx.run.path / "capture" / "done.json"
    baseline = upstream.accuracy(ctx, "baseline_test")
    return {
        "accuracy": accuracy,
        **comparison_fields(ctx.run.path),
        "circuit_variants": variant_fields(ctx),
        "overlap": {kind: None if overlap is None else overlap[kind]["jaccard_mean"] for kind in ("neurons", "heads")},
        "overlap_coefficient": {kind: None if overlap is None else overlap[kind]["overlap_coefficient_mean"]
                                for kind in ("neurons", "heads")},
        "baseline_false_match": None if baseline is None else overall_fraction(baseline),
        "timings": dict(timings["wall_seconds"]),
        "cpu_timings": dict(timings["cpu_seconds"]),
        "model": {"name": ctx.model.name, "source": str(ctx.model.source), "hash": model_hash(ctx),
                  "layers": ctx.config.n_layers, "d_model": ctx.config.d_model},
        "dataset": _dataset(ctx),
        "preset": ctx.preset.name,
        "directions_rule": read_json(capture)["summary"].get("rule") if capture.is_file() else None,
        "directions_rule_requested": ctx.settings.directions_rule,
        "judge": judge_identity(ctx.judge),
        "settings": dataclasses.asdict(ctx.settings),
        "hparams": ctx.hparams.describe(),
        "paper": PAPER,
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _interval(interval: list[float] | None) -> str:
    return "—" if interval is None else f"[{_pct(interval[0])}, {_pct(interval[1])}]"


def headline_markdown(summary: Mapping[str, Any]) -> str:
    acc, paper, fluent = summary["accuracy"], summary["paper"], summary["fluent_accuracy"]
    lines = ["| method | judged accuracy (%) | fluent accuracy (%) | 95% CI (fluent) | paper (%) |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {_pct(acc[m])} | {_pct(fluent[m])} | {_interval(summary['ci95'][m])} | "
              f"{_pct(paper['accuracy'][m])} |" for m in ("prompting", "steering", "circuit")]
    chosen = summary.get("circuit_variants")
    if chosen is not None:
        lines.append(f"| circuit, variant per emotion (chosen on train) | {_pct(chosen['accuracy'])} | "
                     f"{_pct(chosen['fluent_accuracy'])} | {_interval(chosen['ci95'])} | — |")
    if summary["mcnemar"]:
        lines += ["", "McNemar exact p on fluent_match: " + "; ".join(
            f"{name.replace('_', ' ')} {p:.3g}" for name, p in summary["mcnemar"].items()) + "."]
    if summary["tuned"]:
        lines += ["", "Doses tuned on the train split: " + "; ".join(f"{k} {v}" for k, v in summary["tuned"].items()) + "."]
    if chosen is not None:
        picks = "; ".join(f"{e} {c['variant']} at lambda {c['lambda']:g}" for e, c in chosen["choice"].items())
        tests = "; ".join(f"{name.replace('_', ' ')} {t['won']} won, {t['lost']} lost, p {t['exact_p']:.3g}"
                          for name, t in chosen["mcnemar"].items())
        lines += ["", f"Circuit variants ({', '.join(chosen['candidates'])}), each tuned on train, chosen per emotion "
                      f"({chosen['rule']} rule): {picks}. On the {chosen['items']} test items, paired (fluent_match): "
                      f"{tests}. Per emotion: " + ", ".join(f"{e} {_pct(v)}%" for e, v in chosen["per_emotion"].items())
                  + "."]
    random = summary["random_circuit"]
    if random is not None:
        lines += ["", f"Random circuits ({len(random['draws'])} draws, {random['items']} test items): fluent accuracy "
                      f"{_pct(random['mean'])}% (sd {_pct(random['sd'])}) against {_pct(random['true_circuit'])}% "
                      f"for the true circuits on the same items."]
    lines += ["", "| circuit overlap (mean Jaccard) | this run | paper |", "|---|---|---|"]
    lines += [f"| {k} | {_num(summary['overlap'][k])} | {_num(paper['overlap'][k])} |" for k in ("neurons", "heads")]
    if summary.get("baseline_false_match") is not None:
        lines += ["", f"Neutral baseline false-match rate (judge says the unmodified reply matches the target): "
                      f"{_pct(summary['baseline_false_match'])}%."]
    return "\n".join(lines) + "\n"


def _stage_section(run_path: Path, stage: str, caption: str) -> list[str]:
    directory = run_path / stage
    if not directory.is_dir():
        return []
    pngs = sorted(directory.glob("*.png"))
    tables = [p for p in (directory / "accuracy.md", directory / "comparison.md", directory / "variants.md")
              if p.is_file()]
    if not pngs and not tables:
        return []
    lines = [f"## {caption}", ""]
    for table in tables:
        lines += [table.read_text(encoding="utf-8").strip(), ""]
    for png in pngs:
        lines += [f"![{stage}: {png.stem}]({os.path.relpath(png, run_path)})", ""]
    return lines


def report_markdown(run_path: Path, summary: Mapping[str, Any]) -> str:
    data = summary["dataset"]
    lines = [f"# emojax run: {summary['model']['name']}", "",
             f"- preset: `{summary['preset']}`; directions rule: `{summary['directions_rule']}` "
             f"(requested `{summary['directions_rule_requested']}`)",
             f"- train: {data['train']['spec']} ({data['train']['records']} records); test: {data['test']['spec']} "
             f"({data['test']['records']} records)",
             f"- judge: {summary['judge']}",
             f"- transferred hyperparameters: {summary['hparams']}", "",
             "## Headline numbers", "",
             "Paper: Llama-3.2-3B-Instruct on the official test split, judged by gpt-4o-mini (method.md §9); "
             "the committed circuit result is 99.41%. Numbers from another model, split or judge are not "
             "comparable to these.", "", headline_markdown(summary)]
    for stage, caption in SECTIONS:
        lines += _stage_section(run_path, stage, caption)
    cpu = summary["cpu_timings"]
    lines += ["## Timings", "", "Wall seconds, and CPU seconds of the process (all threads).", "",
              "| stage | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} | {cpu.get(stage, float('nan')):.1f} |"
              for stage, seconds in summary["timings"].items()]
    return "\n".join(lines) + "\n"


def run(ctx: StageContext) -> dict[str, Any]:
    """Write summary.json and report.md in the run root (always rewritten: they are cheap)."""
    summary = build_summary(ctx, read_timings(ctx.run.path))
    write_json(ctx.run.path / SUMMARY_NAME, summary)
    write_text(ctx.run.path / REPORT_NAME, report_markdown(ctx.run.path, summary))
    return {"stage": "report", "accuracy": summary["accuracy"], "overlap": summary["overlap"]}
