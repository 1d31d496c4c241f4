"""The comparison stage on hand-made judged outputs: fluent accuracy, Wilson intervals, McNemar
pairs on the same items, the controls, and the summary.json fields built from them."""
from __future__ import annotations

import json

import pytest

from emojax.data import EMOTIONS, VALENCES
from emojax.evaluation.stats import mcnemar, wilson_interval
from emojax.runs import InputError, write_json, write_jsonl
from emojax.runs.stage_record import mark_finished
from emojax.stages import compare, report
from stage_fixtures import make_context


def contract_cell(rows):
    """An accuracy-table cell with the fluency counts of the shared contract."""
    total = len(rows)
    matched = sum(r["judge"]["match"] for r in rows)
    fluent_matched = sum(r["judge"]["fluent_match"] for r in rows)
    return {"accuracy": round(100 * matched / total, 2) if total else None, "matched": matched, "total": total,
            "judge_errors": 0, "fluent": sum(r["judge"]["fluent"] for r in rows), "fluent_matched": fluent_matched,
            "fluent_accuracy": round(100 * fluent_matched / total, 2) if total else None}


def contract_tables(records):
    return {"overall": contract_cell(records),
            "per_emotion": {e: contract_cell([r for r in records if r["emotion"] == e]) for e in EMOTIONS},
            "per_valence": {v: contract_cell([r for r in records if r["valence"] == v]) for v in VALENCES},
            "per_emotion_valence": {e: {v: contract_cell([r for r in records if r["emotion"] == e and r["valence"] == v])
                                        for v in VALENCES} for e in EMOTIONS}}


def judged(outcomes):
    """Records of 24 items (4 per emotion) with the given (match, fluent) per item."""
    records = []
    for index, (match, fluent) in enumerate(outcomes):
        emotion, valence = EMOTIONS[index % 6], VALENCES[index % 3]
        records.append({"key": f"s{index // 6}__{valence}__{emotion}", "emotion": emotion, "valence": valence,
                        "scenario": "a scenario", "event": "an event", "gen_text": f"reply {index}",
                        "judge": {"match": match, "fluent": fluent, "fluent_match": int(match and fluent),
                                  "reason": "", "error": None}})
    return records


def write_stage(ctx, stage, records, summary):
    out = ctx.run.stage(stage)
    write_jsonl(out / "records.jsonl", records)
    write_json(out / "accuracy.json", contract_tables(records))
    mark_finished(ctx.run, stage, {"fake": stage}, summary)


@pytest.fixture
def ctx(tmp_path):
    context = make_context(tmp_path)
    circuit = [(1, 1)] * 14 + [(1, 0)] * 4 + [(0, 1)] * 6
    steering = [(1, 1)] * 4 + [(1, 0)] * 10 + [(0, 0)] * 10
    prompting = [(1, 1)] * 12 + [(0, 1)] * 12
    write_stage(context, "modulate_test", judged(circuit), {"lambda": 4.0, "lambda_source": "tuned", "scales": {}})
    write_stage(context, "steer_test", judged(steering), {"alpha": 1.73, "alpha_source": "tuned"})
    write_stage(context, "elicit_test", judged(prompting), {})
    mark_finished(context.run, "random_circuit_test", {"fake": 1}, {
        "draws": 5, "items": 24, "fluent_accuracy": {"mean": 0.1, "sd": 0.05, "draws": [0.1, 0.05, 0.15, 0.1, 0.1]},
        "accuracy": {"mean": 0.2, "sd": 0.05, "draws": [0.2] * 5},
        "true_circuit": {"fluent_accuracy": 14 / 24, "accuracy": 18 / 24}})
    return context


def test_comparison_has_intervals_and_paired_tests(ctx):
    compare.run(ctx)
    comparison = json.loads((ctx.run.path / "compare" / "comparison.json").read_text())
    assert comparison["fluent_accuracy"]["circuit"]["overall"] == pytest.approx(14 / 24)
    assert comparison["fluent_fraction"]["steering"] == pytest.approx(4 / 24)
    assert comparison["ci95"]["circuit"]["overall"]["fluent_accuracy"] == pytest.approx(wilson_interval(14, 24), abs=1e-6)
    assert comparison["ci95"]["steering"]["overall"]["accuracy"] == pytest.approx(wilson_interval(14, 24), abs=1e-6)
    # circuit vs steering on fluent_match: items 4..13 circuit only (10), none steering only.
    assert comparison["mcnemar"]["circuit_vs_steering"] == {**mcnemar(10, 0), "pairs": 24, "outcome": "fluent_match"}
    # circuit vs prompting: items 12, 13 circuit only; none prompting only.
    assert comparison["mcnemar"]["circuit_vs_prompting"]["b"] == 2 and comparison["mcnemar"]["circuit_vs_prompting"]["c"] == 0
    assert comparison["tuned"]["steer_alpha"] == 1.73 and comparison["tuned"]["modulation_scale"] == 4.0
    assert comparison["random_circuit"]["draws"] == 5
    text = (ctx.run.path / "compare" / "comparison.md").read_text()
    assert "McNemar" in text and "Random circuits (5 draws" in text and "95% CI" in text


def test_summary_json_carries_the_new_fields(ctx):
    compare.run(ctx)
    summary = report.build_summary(ctx, report.read_timings(ctx.run.path))
    assert summary["fluent_accuracy"] == pytest.approx({"prompting": 0.5, "steering": 4 / 24, "circuit": 14 / 24})
    assert summary["ci95"]["circuit"] == pytest.approx(list(wilson_interval(14, 24)), abs=1e-6)
    assert set(summary["mcnemar"]) == {"circuit_vs_steering", "circuit_vs_prompting"}
    assert summary["mcnemar"]["circuit_vs_steering"] == pytest.approx(mcnemar(10, 0)["exact_p"])
    assert summary["tuned"] == {"steer_alpha": 1.73, "modulation_scale": 4.0}
    assert summary["random_circuit"]["mean"] == 0.1 and len(summary["random_circuit"]["draws"]) == 5
    assert summary["accuracy"]["circuit"] == pytest.approx(18 / 24)
    assert "fluent accuracy" in report.headline_markdown(summary)


def test_missing_fluency_counts_are_named(ctx):
    tables = json.loads((ctx.run.path / "steer_test" / "accuracy.json").read_text())
    del tables["overall"]["fluent_matched"]
    write_json(ctx.run.path / "steer_test" / "accuracy.json", tables)
    with pytest.raises(InputError, match="steer_test.*fluent_matched"):
        compare.run(ctx)
