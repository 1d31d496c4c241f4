"""S3 steering on a tiny random model: the per-row intervention, the batched generation, the train sweep."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from emojax.data import EMOTIONS, items, load_sev
from emojax.generation.loop import generate
from emojax.method.prompts import neutral_messages
from emojax.model.interventions import Intervention
from emojax.runs import InputError, read_jsonl
from emojax.stages import directions_stage, elicit, steer, tuning
from stage_fixtures import TINY_PRESET, FakeJudge, fake_fluency, make_context, split, tiny_loaded_model


def test_steering_intervention_layout() -> None:
    model = tiny_loaded_model()
    cfg = model.config
    dirs = np.random.default_rng(0).normal(size=(6, cfg.n_layers, cfg.d_model)).astype(np.float32)
    iv = steer.steering_intervention(cfg, dirs, np.array([2, 0, 5]), [1, 2], alpha=3.0)
    add = np.asarray(iv.resid_add_rms)
    assert add.shape == (cfg.n_layers, 3, 2, cfg.d_model) and iv.resid_where == "from_last"
    np.testing.assert_allclose(add[1, 0, 1], 3.0 * dirs[2, 1])
    np.testing.assert_allclose(add[2, 2, 1], 3.0 * dirs[5, 2])
    assert not add[:, :, 0].any() and not add[0].any() and not add[3].any()
    assert not np.asarray(iv.resid_add).any()


def test_per_row_batch_equals_rows_steered_alone() -> None:
    """Six emotions of one group in one batch give what each row gives with a shared intervention."""
    model = tiny_loaded_model()
    cfg = model.config
    dirs = np.random.default_rng(1).normal(size=(6, cfg.n_layers, cfg.d_model)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    group = items(split(1))[:6]
    prompts = [neutral_messages(i) for i in group]
    kwargs = dict(max_new_tokens=5, min_new_tokens=2, repetition_penalty=1.05, no_repeat_ngram_size=3)
    emotion = np.arange(6)
    batched = generate(model, prompts, iv=steer.steering_intervention(cfg, dirs, emotion, [1, 2], 6.0), **kwargs)
    plain = generate(model, prompts[:1], **kwargs)
    assert len(set(map(tuple, batched.tokens))) > 1          # the rows really are steered differently
    for row in (0, 3, 5):
        shared = Intervention.identity(cfg, resid_where="from_last")
        for layer in (1, 2):
            shared = shared.add_resid(layer, 1, 6.0 * dirs[row, layer], rms_scaled=True)
        alone = generate(model, prompts[:1], iv=shared, **kwargs)
        np.testing.assert_array_equal(batched.tokens[row], alone.tokens[0])
        assert not np.array_equal(alone.tokens[0], plain.tokens[0])


def test_steer_stage_tunes_alpha_on_train_and_uses_it_on_test(tmp_path, monkeypatch) -> None:
    # The judge always matches happiness and matches the other emotions only for replies of even
    # length; replies are fluent unless their length is a multiple of 3: arbitrary but deterministic,
    # so fluent accuracies can differ across alphas.
    fake_fluency(monkeypatch)
    judge = FakeJudge(reject=lambda text, target: target != "happiness" and len(text) % 2 == 1)
    preset = dataclasses.replace(TINY_PRESET, tune_groups=2, tune_extensions=1)
    ctx = make_context(tmp_path, judge=judge, train=split(2), test=split(1, "bundled:test"), preset=preset)
    with pytest.raises(InputError, match="directions stage has not finished"):
        steer.run(ctx)
    elicit.run(ctx, "train")
    directions_stage.run(ctx)
    summary = steer.run(ctx, alpha_sweep=True)

    sweep = json.loads((ctx.run.path / "steer_sweep_train" / "sweep.json").read_text())
    reference = tuning.round_dose(ctx.hparams.steer_alpha)
    assert sweep["split"] == "train" and sweep["items"] == 12 and sweep["reference"] == reference
    assert set(tuning.initial_grid(reference, tuning.rule_for(preset))) <= set(sweep["grid"])
    assert len(sweep["grid"]) <= 3 + preset.tune_extensions
    curve = dict(zip(sweep["grid"], sweep["curves"]["fluent_accuracy"]["overall"]))
    assert sweep["best"] == tuning.choose(curve, reference)
    for alpha in sweep["grid"]:
        swept = read_jsonl(ctx.run.path / "steer_sweep_train" / f"alpha_{alpha:g}" / "records.jsonl")
        assert {r["skeleton_id"] for r in swept} <= {r.skeleton_id for r in ctx.train} and len(swept) == 12
        assert all(r["meta"]["alpha"] == alpha for r in swept)
        assert tuning.measures(swept)["fluent_accuracy"]["overall"] == curve[alpha]

    out = ctx.run.path / "steer_test"
    choice = json.loads((out / "alpha.json").read_text())
    assert summary["alpha"] == choice["alpha"] == sweep["best"] and "tuned on the train split" in choice["source"]
    assert summary["directions_rule"] == choice["directions_rule"] == "all"   # 2 records: too few groups
    records = read_jsonl(out / "records.jsonl")
    assert [r["key"] for r in records] == [i.key for i in items(ctx.test)]
    assert all({"match", "fluent", "fluent_match"} <= set(r["judge"]) and "perplexity" in r["fluency"] for r in records)
    meta = records[0]["meta"]
    assert meta["condition"] == "steering" and meta["positions"] == "P_last" and meta["alpha"] == sweep["best"]
    assert meta["steer_layers"] == [ctx.hparams.steer_layers[0], ctx.hparams.steer_layers[-1]]
    assert (meta["decoding"]["min_new_tokens"], meta["decoding"]["repetition_penalty"],
            meta["decoding"]["no_repeat_ngram_size"]) == (10, 1.05, 3)
    tables = json.loads((out / "accuracy.json").read_text())
    assert summary["accuracy"] == tables["overall"] and tables["per_emotion"]["happiness"]["accuracy"] == 100.0
    assert set(tables["per_emotion"]) == set(EMOTIONS)


def test_per_row_alphas_equal_one_alpha_at_a_time() -> None:
    """The doses of one tuning step share a batch: each row steered with its own alpha."""
    model = tiny_loaded_model()
    cfg = model.config
    dirs = np.random.default_rng(2).normal(size=(6, cfg.n_layers, cfg.d_model)).astype(np.float32)
    emotion = np.array([1, 1, 4])
    mixed = np.asarray(steer.steering_intervention(cfg, dirs, emotion, [1, 2], np.array([0.5, 2.0, 8.0])).resid_add_rms)
    for row, alpha in enumerate((0.5, 2.0, 8.0)):
        alone = np.asarray(steer.steering_intervention(cfg, dirs, emotion[row:row + 1], [1, 2], alpha).resid_add_rms)
        np.testing.assert_allclose(mixed[:, row], alone[:, 0])


OFFICIAL_SEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "official" / "sev.jsonl"


@pytest.mark.skipif(not OFFICIAL_SEV.is_file(), reason="official SEV file not present")
def test_stages_run_on_the_official_sev_file(tmp_path) -> None:
    """The same stages on the paper's SEV file, chosen by the one dataset argument ("official")."""
    ctx = make_context(tmp_path, train=split(2, "official"), test=split(1, "official", offset=2))
    elicit.run(ctx, "train")
    directions_stage.run(ctx)
    summary = steer.run(ctx)
    records = read_jsonl(ctx.run.path / "steer_test" / "records.jsonl")
    official_ids = {r.skeleton_id for r in load_sev(OFFICIAL_SEV)}
    assert {r["skeleton_id"] for r in records} <= official_ids
    assert len(records) == len(items(ctx.test)) and summary["accuracy"]["total"] == len(records)
