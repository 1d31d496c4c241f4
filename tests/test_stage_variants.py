"""Circuit variants tuned on train (emojax.stages.variants): the budgets they build, the combined
circuit-plus-steering edit against its two parts, the default variant against the pipeline's own
lambda tuning, the choice rules, and the test-split stage."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from emojax.circuit import Budget
from emojax.data import EMOTIONS, items
from emojax.method.prompts import neutral_messages, tokenize_prompts
from emojax.model.forward import forward
from emojax.runs import read_jsonl, write_npz
from emojax.runs.stage_record import mark_finished, model_hash
from emojax.stages import circuit_stage, modulate, steer, upstream, variants
from emojax.stages.tuning import choose
from stage_fixtures import TINY_PRESET, FakeJudge, fake_fluency, make_context, split
from test_stage_modulate import random_circuits_of, random_deltas, write_upstream


def write_rankings(ctx, seed=0):
    """What the components and sublayer stages would have written."""
    cfg, rng = ctx.config, np.random.default_rng(seed)
    meta = {"model_hash": model_hash(ctx)}
    write_npz(ctx.run.stage("components") / "neuron_stats.npz",
              {"C_mean": rng.normal(size=(6, cfg.n_layers, cfg.d_ff)).astype(np.float32)}, meta=meta)
    write_npz(ctx.run.stage("components") / "head_stats.npz",
              {"mean": rng.normal(size=(6, cfg.n_layers, cfg.n_heads)).astype(np.float32)}, meta=meta)
    mark_finished(ctx.run, "components", {"fake": seed}, {})
    write_npz(ctx.run.stage("sublayer") / "influence.npz",
              {"mean_over_alpha": rng.uniform(size=(6, 2, cfg.n_layers)).astype(np.float32)}, meta=meta)
    mark_finished(ctx.run, "sublayer", {"fake": seed}, {})


@pytest.fixture
def ctx(tmp_path):
    reject = lambda text, target: target == "fear"  # noqa: E731  (the judge never matches fear)
    context = make_context(tmp_path, preset=dataclasses.replace(TINY_PRESET, batch_size=12, tune_groups=1),
                           test=split(1, "bundled:test"), train=split(1), judge=FakeJudge(reject))
    write_upstream(context)
    write_rankings(context)
    return context


def test_a_kind_scaled_to_zero_has_no_minimum_and_no_members(ctx):
    budget = Budget(neurons=20, heads=6, min_neurons=2, min_heads=1)
    assert variants.scaled_budget(budget, 2.0, 0.5) == Budget(40, 3, 2, 1)
    assert variants.scaled_budget(budget, 1.0, 0.0) == Budget(20, 0, 2, 0)
    neurons_only = variants.variant_circuits(ctx, variants.BY_NAME["neurons_only"])
    heads_only = variants.variant_circuits(ctx, variants.BY_NAME["heads_only"])
    base = circuit_stage.budget_for(ctx.config, ctx.settings.budget)
    for emotion in EMOTIONS:
        assert not neurons_only[emotion].head_set() and len(neurons_only[emotion].neuron_set()) == base.neurons
        assert not heads_only[emotion].neuron_set() and len(heads_only[emotion].head_set()) == base.heads


def test_a_larger_budget_keeps_the_smaller_circuits_members(ctx):
    """Members are each layer's top-ranked components, so a budget that allocates at least as many per
    layer contains the smaller circuit."""
    small = variants.variant_circuits(ctx, variants.BY_NAME["budget_x0.5"])
    large = variants.variant_circuits(ctx, variants.BY_NAME["budget_x2"])
    for emotion in EMOTIONS:
        for layer in range(ctx.config.n_layers):
            if len(large[emotion].neurons[layer]) >= len(small[emotion].neurons[layer]):
                assert set(small[emotion].neurons[layer]) <= set(large[emotion].neurons[layer])
        assert len(large[emotion].neuron_set()) > len(small[emotion].neuron_set())


def test_the_default_variant_is_the_runs_circuit(ctx):
    assert variants.variant_circuits(ctx, variants.BY_NAME["default"]) == upstream.circuits(ctx)


def test_circuit_plus_steering_is_each_edit_where_the_other_is_zero(ctx):
    cfg, params = ctx.config, ctx.model.params
    batch = tokenize_prompts(ctx.model.tokenizer, [neutral_messages(i) for i in items(ctx.test)[:3]])
    emotion = np.array([0, 2, 5])
    dirs = np.random.default_rng(1).normal(size=(6, cfg.n_layers, cfg.d_model)).astype(np.float32)
    steering = steer.steering_intervention(cfg, dirs, emotion, [1, 2], np.array([0.5, 1.0, 2.0]))
    edits = modulate.component_edits(random_circuits_of(cfg), *random_deltas(cfg, size=2.0), np.ones(6), cfg)
    zero = tuple(np.zeros_like(e) for e in edits)

    def logits(iv):
        return np.asarray(forward(params, batch.tokens, config=cfg, mask=batch.mask, iv=iv).logits)

    circuit_only = modulate.row_intervention(*edits, emotion, cfg)
    np.testing.assert_allclose(logits(modulate.row_intervention(*edits, emotion, cfg, np.zeros_like(
        np.asarray(steering.resid_add_rms)))), logits(circuit_only), atol=1e-5)
    np.testing.assert_allclose(logits(modulate.row_intervention(*zero, emotion, cfg, np.asarray(steering.resid_add_rms))),
                               logits(steering), atol=1e-5)
    both = logits(modulate.row_intervention(*edits, emotion, cfg, np.asarray(steering.resid_add_rms)))
    assert np.abs(both - logits(circuit_only)).max() > 1e-3 and np.abs(both - logits(steering)).max() > 1e-3


def test_the_default_variant_tunes_as_the_pipeline_does(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    ctx.settings.per_emotion_dose = True
    pipeline = modulate.run_scale_sweep(dataclasses.replace(ctx, preset=dataclasses.replace(ctx.preset,
                                                                                            tune_extensions=3)))
    calls = len(ctx.judge.calls)
    reused = variants.tune_variant(ctx, variants.BY_NAME["default"])
    assert len(ctx.judge.calls) == calls   # the run's own replies at every dose: nothing generated or judged
    shortcut = {d: read_jsonl(ctx.run.path / "variant_default" / f"lambda_{d:g}" / "records.jsonl")
                for d in reused["grid"]}
    assert all(r["meta"]["reused_from"] == modulate.SWEEP_STAGE for rs in shortcut.values() for r in rs)
    # Brute force: the variant's own generation, reply for reply the pipeline's and the shortcut's.
    shutil.rmtree(ctx.run.path / "variant_default")
    monkeypatch.setattr(variants, "_run_sweep_replies", lambda *a: {})
    variant = variants.tune_variant(ctx, variants.BY_NAME["default"])
    assert len(ctx.judge.calls) > calls
    assert variant["grid"] == pipeline["grid"] == reused["grid"] and variant["curves"] == pipeline["curves"]
    assert variant["per_emotion_best"] == pipeline["per_emotion_best"] and variant["curves"] == reused["curves"]
    for dose in variant["grid"]:
        mine = read_jsonl(ctx.run.path / "variant_default" / f"lambda_{dose:g}" / "records.jsonl")
        theirs = read_jsonl(ctx.run.path / modulate.SWEEP_STAGE / f"lambda_{dose:g}" / "records.jsonl")
        assert [r["gen_text"] for r in mine] == [r["gen_text"] for r in theirs] == [r["gen_text"] for r in shortcut[dose]]
        assert [r["judge"] for r in mine] == [r["judge"] for r in shortcut[dose]]


def test_a_variant_that_changes_the_circuits_generates_its_own_replies(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    modulate.run_scale_sweep(ctx)
    calls = len(ctx.judge.calls)
    variants.tune_variant(ctx, variants.BY_NAME["heads_only"])
    assert len(ctx.judge.calls) > calls
    records = read_jsonl(next((ctx.run.path / "variant_heads_only").glob("lambda_*/records.jsonl")))
    assert not any("reused_from" in r["meta"] for r in records)


def summary_of(curves):
    """A tuned variant's summary with `curves` {curve name: {dose: fluent accuracy}}."""
    grid = sorted(next(iter(curves.values())))
    full = {c: [curves.get(c, {}).get(d, 0.0) for d in grid] for c in ("overall",) + EMOTIONS}
    return {"grid": grid, "curves": {"fluent_accuracy": full},
            "best": choose(dict(zip(grid, full["overall"])), 1.0),
            "per_emotion_best": {e: choose(dict(zip(grid, full[e])), 1.0) for e in EMOTIONS},
            "bracketed": {}, "sizes": {}, "steer_alpha": 0.0}


def test_the_choice_rules():
    tuned = {"default": summary_of({"overall": {1.0: 0.2, 4.0: 0.4}, "sadness": {1.0: 0.5, 4.0: 1.0},
                                                "anger": {1.0: 0.0, 4.0: 0.0}}),
             "budget_x2": summary_of({"overall": {1.0: 0.3, 2.0: 0.4}, "sadness": {1.0: 1.0, 2.0: 0.5},
                                                    "fear": {1.0: 0.0, 2.0: 0.25}}),
             "steer_0.5": summary_of({"overall": {1.0: 0.45}, "fear": {1.0: 0.25}})}
    rows = variants.table_rows(tuned)
    assert variants.choose_one(rows)["anger"] == {"variant": "steer_0.5", "lambda": 1.0}
    per_emotion = variants.choose_per_emotion(rows, tuned)
    assert per_emotion["sadness"] == {"variant": "default", "lambda": 4.0}    # a tie goes to the default
    assert per_emotion["anger"] == {"variant": "default", "lambda": 4.0}      # nothing moves it: the default
    assert per_emotion["fear"] == {"variant": "budget_x2", "lambda": 2.0}     # a tie between variants: list order
    tied = {**tuned, "budget_x2": summary_of({"overall": {1.0: 0.4}})}
    tied.pop("steer_0.5")
    assert variants.choose_one(variants.table_rows(tied))["fear"]["variant"] == "default"


def test_unknown_variants_are_named():
    with pytest.raises(variants.InputError, match="budget_x3"):
        variants.select(["budget_x3", "default"])


def test_the_test_stage_runs_what_the_rule_chose(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    ctx.settings.per_emotion_dose = True
    mark_finished(ctx.run, steer.SWEEP_STAGE, {"fake": 0}, {"best": 1.5})
    table = variants.run_train(ctx, ["default", "steer_0.5"])
    assert [r["variant"] for r in table["rows"]] == ["default", "steer_0.5"]
    assert json.loads((ctx.run.path / variants.TRAIN_STAGE / "variants.json").read_text())["rows"] == table["rows"]
    assert table["rows"][1]["steer_alpha"] == pytest.approx(0.75)
    steer.run(ctx)
    modulate.run(ctx)
    summary = variants.run_test(ctx, "per_emotion")
    records = read_jsonl(ctx.run.path / "variants_test_per_emotion" / "records.jsonl")
    assert len(records) == summary["items"] == len(items(ctx.test))
    assert {r["skeleton_id"] for r in records} <= {r.skeleton_id for r in ctx.test}
    assert summary["choice"] == table["per_emotion"]
    for other in ("steer_test", "modulate_test"):
        assert summary["paired"][other]["pairs"] == len(records)
    # Resumed, the finished stage is reused as it is.
    assert variants.run_test(ctx, "per_emotion") == summary


def test_replies_of_the_runs_own_circuit_are_reused_and_equal_generating_them(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    steer.run(ctx)
    modulate.run(ctx)   # lambda 1 for every emotion, anger x 0.8
    used = upstream.modulation_scales(ctx)
    choice = {e: {"variant": "default", "lambda": 1.0 if k < 3 else 2.0} for k, e in enumerate(EMOTIONS)}
    choice["fear"] = {"variant": "heads_only", "lambda": 1.0}   # the same lambda, other members: generated
    (ctx.run.stage("table")).mkdir(exist_ok=True)
    (ctx.run.path / "table" / "variants.json").write_text(json.dumps({"per_emotion": choice}))
    reused = variants.run_test(ctx, "per_emotion", "table", "with_reuse")
    shortcut = read_jsonl(ctx.run.path / "with_reuse" / "records.jsonl")
    run_circuit = {r["key"]: r for r in read_jsonl(ctx.run.path / "modulate_test" / "records.jsonl")}
    first_three = [r for r in shortcut if r["emotion"] in EMOTIONS[:3]]
    assert reused["reused"] == len(first_three) > 0 and used[0] == pytest.approx(0.8)
    assert all(r["meta"]["reused_from"] == "modulate_test" for r in first_three)
    assert all(r["gen_text"] == run_circuit[r["key"]]["gen_text"] for r in first_three)
    assert not any("reused_from" in r["meta"] for r in shortcut if r["emotion"] not in EMOTIONS[:3])
    # Brute force: every reply generated, in other batches; the same replies and verdicts.
    monkeypatch.setattr(variants, "_run_circuit_replies", lambda *a: {})
    brute = variants.run_test(ctx, "per_emotion", "table", "without_reuse")
    generated = read_jsonl(ctx.run.path / "without_reuse" / "records.jsonl")
    assert brute["reused"] == 0 and [r["key"] for r in generated] == [r["key"] for r in shortcut]
    assert [(r["gen_text"], r["judge"]) for r in generated] == [(r["gen_text"], r["judge"]) for r in shortcut]
    assert brute["fluent_accuracy"] == reused["fluent_accuracy"] and brute["paired"] == reused["paired"]


def test_grid_variants_tune_around_their_own_reference(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    fine = variants.BY_NAME["lambda_fine"]
    assert "reference" not in variants.BY_NAME["default"].identity() and fine.identity()["ratio"] == pytest.approx(2 ** 0.5)
    summary = variants.tune_variant(ctx, fine)
    assert summary["reference"] == 4.0 and {2.8284, 4.0, 5.6569} <= set(summary["grid"])
    assert variants.variant_circuits(ctx, fine) == upstream.circuits(ctx)


def test_circuit_changes_are_refused_on_a_run_ranked_by_causal_scans(ctx):
    ctx.settings.circuit_ranking = "causal"
    assert variants.variant_circuits(ctx, variants.BY_NAME["steer_0.25"]) == upstream.circuits(ctx)
    with pytest.raises(variants.InputError, match="budget_x2 changes the analytic circuits"):
        variants.variant_circuits(ctx, variants.BY_NAME["budget_x2"])


def test_a_causal_variant_reuses_the_runs_own_scan_of_as_many_prompts(ctx, monkeypatch):
    cfg = ctx.config
    rng = np.random.default_rng(3)
    scores = {"neuron_causal": rng.normal(size=(6, cfg.n_layers, cfg.d_ff)).astype(np.float32),
              "head_causal": rng.normal(size=(6, cfg.n_layers, cfg.n_heads)).astype(np.float32)}
    write_npz(ctx.run.stage("causal") / "causal_scores.npz", scores, meta={"model_hash": model_hash(ctx)})
    mark_finished(ctx.run, "causal", {"fake": 0}, {"prompts": dict.fromkeys(EMOTIONS, 1),
                                                   "layers": list(range(cfg.n_layers))})
    monkeypatch.setattr(variants.causal, "scan_means", lambda *a, **k: pytest.fail("scanned again"))
    reused = variants.variant_circuits(ctx, variants.BY_NAME["causal_1"])
    base = circuit_stage.budget_for(cfg, ctx.settings.budget)
    want = circuit_stage.build_all(upstream.influence(ctx), scores["neuron_causal"], scores["head_causal"], base,
                                   ctx.settings.ratio_mode)
    assert reused == {e: c for e, (c, _) in want.items()}
    monkeypatch.setattr(variants.causal, "fingerprint", lambda *a, **k: {})
    with pytest.raises(pytest.fail.Exception, match="scanned again"):   # 4 prompts: a scan of its own
        variants.variant_circuits(ctx, variants.BY_NAME["causal_4"])


def test_the_variants_tuning_never_reads_the_test_split(ctx, monkeypatch):
    from test_stage_modulate import Untouchable
    fake_fluency(monkeypatch)
    mark_finished(ctx.run, steer.SWEEP_STAGE, {"fake": 0}, {"best": 1.5})
    train_only = dataclasses.replace(ctx, test=Untouchable())
    table = variants.run_train(train_only, ["default", "heads_only", "budget_x2", "steer_0.25"])
    assert [r["variant"] for r in table["rows"]] == ["default", "budget_x2", "heads_only", "steer_0.25"]
    for row in table["rows"]:
        records = read_jsonl(ctx.run.path / f"variant_{row['variant']}" / f"lambda_{row['lambda']:g}" / "records.jsonl")
        assert {r["skeleton_id"] for r in records} <= {r.skeleton_id for r in ctx.train}
