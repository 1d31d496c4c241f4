"""The end-to-end pipeline on a tiny random model with one scenario per theme and a fake judge:
every stage runs, summary.json and report.md carry the required content, and a second invocation
skips every finished stage."""
from __future__ import annotations

import dataclasses
import json

import pytest
from absl import app

from emojax.data import EMOTIONS
from emojax.launch.launcher import list_flag, no_extra_arguments, open_context
from emojax.launch.pipeline import STAGE_NAMES, Options, run_pipeline, stage_headline
from emojax.stages import report
from stage_fixtures import TINY_PRESET, FakeJudge, fake_fluency, tiny_loaded_model

pytestmark = pytest.mark.slow  # about 100 CPU-seconds: every stage compiles its programs once

PRESET = dataclasses.replace(TINY_PRESET, name="pipeline-test", train_per_theme=1, test_per_theme=1,
                             batch_size=48, tune_groups=2, tune_extensions=1, random_draws=5, random_groups=2,
                             variants=("default", "ref_middle"))
# The judge rejects some replies so that accuracies are not trivially 100%.
JUDGE = FakeJudge(lambda text, target: (len(text) + len(target)) % 5 == 0)
# The validation curves (a stage of their own, tested on their own) are the slowest part on a tiny
# model; causal scans are off as in the quick preset, the tuning and the random-circuit control on.
OPTIONS = Options(validation=False, alpha_sweep=True, scale_sweep=True, random_circuits=True, variants=True)
OFF = {"validation", "causal", "modulate_other_ranking_test"}   # the other ranking needs the causal scans


@pytest.fixture(scope="module")
def fluency():
    with pytest.MonkeyPatch.context() as patch:
        fake_fluency(patch)
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fluency):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    model = tiny_loaded_model()
    ctx = open_context(out=str(out), model=model, preset=PRESET, judge=JUDGE)
    first = run_pipeline(ctx, OPTIONS)
    ctx.run.close()
    return out, model, first


def test_summary_has_the_required_keys(finished):
    out, model, first = finished
    summary = json.loads((out / report.SUMMARY_NAME).read_text())
    assert set(summary["accuracy"]) == {"prompting", "steering", "circuit"}
    assert all(0.0 <= v <= 1.0 for v in summary["accuracy"].values())
    assert set(summary["overlap"]) == {"neurons", "heads"}
    assert all(0.0 <= v <= 1.0 for v in summary["overlap"].values())
    ran = [s for s in STAGE_NAMES if s not in OFF]
    assert set(summary["timings"]) == set(ran) and all(t >= 0 for t in summary["timings"].values())
    assert summary["model"]["name"] == model.name
    assert summary["dataset"]["train"]["records"] == 8 and summary["dataset"]["test"]["records"] == 8
    assert summary["preset"] == "pipeline-test"
    assert summary["directions_rule"] in ("accepted", "all") and summary["judge"] == "fake"
    assert summary["accuracy"]["prompting"] == first["summaries"]["elicit_test"]["accuracy_fraction"]
    methods = {"prompting", "steering", "circuit"}
    assert set(summary["fluent_accuracy"]) == set(summary["ci95"]) == methods
    for method in methods:
        low, high = summary["ci95"][method]
        assert 0.0 <= low <= summary["fluent_accuracy"][method] <= high <= 1.0
        assert summary["fluent_accuracy"][method] <= summary["accuracy"][method]
    assert set(summary["mcnemar"]) == {"circuit_vs_steering", "circuit_vs_prompting"}
    assert all(0.0 <= p <= 1.0 for p in summary["mcnemar"].values())
    steering, circuit = (json.loads((out / stage / "sweep.json").read_text())
                         for stage in ("steer_sweep_train", "modulate_sweep_train"))
    assert summary["tuned"] == {"steer_alpha": steering["best"], "modulation_scale": circuit["best"]}
    assert len(summary["random_circuit"]["draws"]) == 5 and summary["random_circuit"]["sd"] is not None
    assert summary["random_circuit"]["items"] == 12
    assert set(summary["circuit_rankings"]) == {"analytic"}
    chosen = summary["circuit_variants"]
    assert chosen["candidates"] == ["default", "ref_middle"] and chosen["rule"] == "per_emotion"
    assert set(chosen["choice"]) == set(chosen["per_emotion"]) == set(EMOTIONS)
    assert {c["variant"] for c in chosen["choice"].values()} <= {"default", "ref_middle"}
    assert chosen["items"] == first["summaries"]["modulate_test"]["items"] and chosen["ci95"][0] <= chosen["fluent_accuracy"] <= chosen["ci95"][1]
    assert chosen["fluent_accuracy"] <= chosen["accuracy"]
    assert set(chosen["mcnemar"]) == {"vs_steering", "vs_circuit"}


def test_report_shows_tables_and_plots(finished):
    out, _, _ = finished
    text = (out / report.REPORT_NAME).read_text()
    for heading in ("Headline numbers", "Sublayer causal influence", "Global emotion circuits",
                    "Circuit variants tuned on the train split", "circuit, variant per emotion (chosen on train)",
                    "Accuracy comparison", "Timings"):
        assert heading in text
    images = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert any("influence_heatmap" in i for i in images) and any("circuit_anger" in i for i in images)
    assert any("dose_response" in i for i in images) and any("tuning" in i for i in images)
    assert all((out / image).is_file() for image in images)
    comparison = json.loads((out / "compare" / "comparison.json").read_text())
    assert set(comparison["accuracy"]) >= {"prompting", "steering", "circuit"}


def test_second_invocation_skips_every_stage(finished, fluency):
    out, model, first = finished
    ctx = open_context(out=str(out), model=model, preset=PRESET, judge=JUDGE)
    calls = len(JUDGE.calls)
    second = run_pipeline(ctx, OPTIONS)
    ctx.run.close()
    assert set(second["skipped"]) == set(first["timings"]) - {"report"}
    assert len(JUDGE.calls) == calls  # nothing was judged again
    assert {k: v for k, v in second["timings"].items() if k != "report"} == \
        {k: v for k, v in first["timings"].items() if k != "report"}


def test_launcher_argument_helpers_name_the_bad_input():
    assert list_flag("layers", ["3", "14"], int, "layer indices") == [3, 14]
    with pytest.raises(app.UsageError, match=r"--alphas=1,x: expected numbers"):
        list_flag("alphas", ["1", "x"], float, "numbers")
    no_extra_arguments(["prog"])
    with pytest.raises(app.UsageError, match="unexpected arguments: stray"):
        no_extra_arguments(["prog", "stray"])


def test_stage_line_names_items_and_both_accuracies():
    cell = {"accuracy": 19.44, "matched": 28, "total": 144, "fluent_accuracy": 12.5, "fluent_matched": 18}
    assert stage_headline({"items": 144, "accuracy": cell}) == \
        "144 items, accuracy 19.4% (28/144), fluent 12.5% (18/144), "
    assert stage_headline({"rows": 96}) == "96 items, "
    assert stage_headline({"stage": "components"}) == ""
