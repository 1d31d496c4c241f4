"""Circuit modulation (S7): the component edits, their residual equivalent, the D10 position sets,
per-row batching of the six emotions, and the modulation, baseline and sweep stages' outputs."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import pytest

from emojax.circuit import Circuit
from emojax.data import EMOTIONS, groups, items
from emojax.generation.loop import generate
from emojax.method.prompts import neutral_messages, tokenize_prompts
from emojax.model.forward import forward
from emojax.model.interventions import Intervention
from emojax.runs import read_jsonl, write_json, write_npz
from emojax.runs.stage_record import mark_finished, model_hash
from emojax.stages import circuit_stage, modulate, other_ranking, random_circuits, steer, tuning, upstream
from stage_fixtures import TINY_PRESET, FakeJudge, fake_fluency, make_context, split


def random_circuits_of(config, seed=0):
    rng = np.random.default_rng(seed)
    return {e: Circuit(e, tuple(tuple(rng.choice(config.d_ff, 3, replace=False).tolist()) for _ in range(config.n_layers)),
                       tuple(tuple(rng.choice(config.n_heads, 1).tolist()) for _ in range(config.n_layers)))
            for e in EMOTIONS}


def random_deltas(config, seed=0, size=1.0):
    rng = np.random.default_rng(seed)
    return (size * rng.normal(size=(6, config.n_layers, config.d_ff)).astype(np.float32),
            size * rng.normal(size=(6, config.n_layers, config.q_dim)).astype(np.float32))


def write_upstream(ctx, seed=0):
    """What the directions and circuit stages would have written."""
    cfg = ctx.config
    delta_mlp, delta_attn = random_deltas(cfg, seed, size=3.0)
    rng = np.random.default_rng(seed)
    vectors = {"dirs_attn": rng.normal(size=(6, cfg.n_layers, cfg.d_model)), "dirs_mlp": rng.normal(size=(6, cfg.n_layers, cfg.d_model)),
               "delta_mlp": delta_mlp, "delta_attn": delta_attn, "sigma_attn": np.ones(cfg.n_layers),
               "sigma_mlp": np.ones(cfg.n_layers), "v_ref": rng.normal(size=(6, cfg.d_model))}
    write_npz(ctx.run.stage("directions") / "directions.npz", {k: np.asarray(v, np.float32) for k, v in vectors.items()},
              meta={"model_hash": model_hash(ctx)})
    mark_finished(ctx.run, "directions", {"fake": seed}, {})
    for emotion, circuit in random_circuits_of(cfg, seed).items():
        write_json(ctx.run.stage("circuit") / f"{emotion}.json", circuit.to_record({"model_hash": model_hash(ctx)}))
    mark_finished(ctx.run, "circuit", {"fake": seed}, {})


def test_component_edits_are_scaled_deltas_on_circuit_members_only(tmp_path):
    cfg = make_context(tmp_path).config
    circuits = random_circuits_of(cfg)
    delta_mlp, delta_attn = random_deltas(cfg)
    scales = modulate.emotion_scales(1.5, official=True)
    assert scales[EMOTIONS.index("anger")] == pytest.approx(1.2) and scales[1] == pytest.approx(1.5)
    neuron_add, head_add = modulate.component_edits(circuits, delta_mlp, delta_attn, scales, cfg)
    heads_delta = delta_attn.reshape(6, cfg.n_layers, cfg.n_heads, cfg.head_dim)
    for e, emotion in enumerate(EMOTIONS):
        for layer in range(cfg.n_layers):
            members = np.zeros(cfg.d_ff, bool)
            members[list(circuits[emotion].neurons[layer])] = True
            np.testing.assert_allclose(neuron_add[e, layer], np.where(members, scales[e] * delta_mlp[e, layer], 0))
            heads = np.zeros(cfg.n_heads, bool)
            heads[list(circuits[emotion].heads[layer])] = True
            np.testing.assert_allclose(head_add[e, layer],
                                       np.where(heads[:, None], scales[e] * heads_delta[e, layer], 0))


def test_component_edits_equal_residual_vectors(tmp_path):
    """§2.5: adding lambda*Delta to z / a is adding u^attn / u^mlp to the branch outputs."""
    ctx = make_context(tmp_path)
    cfg, params = ctx.config, ctx.model.params
    neuron_add, head_add = modulate.component_edits(random_circuits_of(cfg), *random_deltas(cfg), np.ones(6), cfg)
    u_attn, u_mlp = modulate.residual_vectors(params, neuron_add, head_add)
    batch = tokenize_prompts(ctx.model.tokenizer, [neutral_messages(i) for i in items(ctx.test)[:3]])
    e = EMOTIONS.index("fear")
    components = Intervention.identity(cfg).replace(neuron_add=jnp.asarray(neuron_add[e]),
                                                    head_add=jnp.asarray(head_add[e]))
    residual = Intervention.identity(cfg).replace(resid_add=jnp.asarray(np.stack([u_attn[e], u_mlp[e]], axis=1)))
    got = forward(params, batch.tokens, config=cfg, mask=batch.mask, iv=components).logits
    want = forward(params, batch.tokens, config=cfg, mask=batch.mask, iv=residual).logits
    np.testing.assert_allclose(np.asarray(got)[batch.mask], np.asarray(want)[batch.mask], rtol=1e-4, atol=1e-4)


def test_heads_edit_every_position_and_neurons_only_from_t_star(tmp_path):
    """D10: with the neuron edits alone the prompt positions before t* are untouched; the head edits
    change them too."""
    ctx = make_context(tmp_path)
    cfg, params = ctx.config, ctx.model.params
    neuron_add, head_add = modulate.component_edits(random_circuits_of(cfg), *random_deltas(cfg), np.ones(6), cfg)
    batch = tokenize_prompts(ctx.model.tokenizer, [neutral_messages(i) for i in items(ctx.test)[:2]])
    plain = np.asarray(forward(params, batch.tokens, config=cfg, mask=batch.mask).logits)

    def logits(neurons, heads):
        iv = modulate.row_intervention(neurons, heads, np.array([0, 1]), cfg)
        return np.asarray(forward(params, batch.tokens, config=cfg, mask=batch.mask, iv=iv).logits)

    neurons_only = logits(neuron_add, np.zeros_like(head_add))
    np.testing.assert_allclose(neurons_only[:, :-1][batch.mask[:, :-1]], plain[:, :-1][batch.mask[:, :-1]], atol=1e-5)
    assert not np.allclose(neurons_only[:, -1], plain[:, -1], atol=1e-3)
    heads_only = logits(np.zeros_like(neuron_add), head_add)
    assert not np.allclose(heads_only[:, :-1][batch.mask[:, :-1]], plain[:, :-1][batch.mask[:, :-1]], atol=1e-3)


def test_per_row_batch_equals_one_emotion_at_a_time(tmp_path):
    ctx = make_context(tmp_path)
    cfg = ctx.config
    neuron_add, head_add = modulate.component_edits(random_circuits_of(cfg), *random_deltas(cfg, size=3.0),
                                                    np.ones(6), cfg)
    group = groups(ctx.test)[0]
    batch = tokenize_prompts(ctx.model.tokenizer, [neutral_messages(i) for i in group.items])
    rows = np.arange(6)
    mixed = generate(ctx.model, (batch.tokens, batch.mask), max_new_tokens=5,
                     iv=modulate.row_intervention(neuron_add, head_add, rows, cfg))
    for e in (0, 3, 5):
        single = Intervention.identity(cfg, neuron_where="from_last", head_where="all").replace(
            neuron_add=jnp.asarray(neuron_add[e]), head_add=jnp.asarray(head_add[e]))
        alone = generate(ctx.model, (batch.tokens[e:e + 1], batch.mask[e:e + 1]), max_new_tokens=5, iv=single)
        np.testing.assert_array_equal(mixed.tokens[e], alone.tokens[0])
    assert len({tuple(t) for t in mixed.tokens}) > 1  # the emotions' edits differ


@pytest.fixture
def ctx(tmp_path):
    preset = dataclasses.replace(TINY_PRESET, batch_size=12)
    reject = lambda text, target: target == "fear"  # noqa: E731  (the judge never matches fear)
    context = make_context(tmp_path, preset=preset, test=split(1, "bundled:test"), train=split(1),
                           judge=FakeJudge(reject))
    write_upstream(context)
    return context


def test_modulation_stage_writes_judged_records(ctx):
    summary = modulate.run(ctx)
    out = ctx.run.path / modulate.STAGE
    records = read_jsonl(out / "records.jsonl")
    assert [r["key"] for r in records] == [i.key for i in items(ctx.test)]
    assert records[0]["meta"]["condition"] == "circuit"
    assert records[0]["meta"]["scales"]["anger"] == pytest.approx(0.8)
    assert records[0]["meta"]["decoding"]["repetition_penalty"] == 1.1
    assert all(r["judge"]["fluent_match"] == (r["judge"]["match"] and r["judge"]["fluent"]) for r in records)
    assert all(set(r["fluency"]) == {"perplexity", "distinct_1", "distinct_2", "repetition"} for r in records)
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["per_emotion"]["fear"]["matched"] == 0
    assert summary["accuracy_fraction"] == pytest.approx(5 / 6)
    done = (out / "done.json").read_text()
    modulate.run(ctx)
    assert (out / "done.json").read_text() == done


def test_baseline_generates_once_per_group_and_judges_every_target(ctx):
    summary = modulate.run_baseline(ctx)
    records = read_jsonl(ctx.run.path / modulate.BASELINE_STAGE / "records.jsonl")
    assert len(records) == 6 * len(groups(ctx.test)) and summary["generations"] == len(groups(ctx.test))
    for start in range(0, len(records), 6):
        texts = {r["gen_text"] for r in records[start:start + 6]}
        assert len(texts) == 1
        assert [r["emotion"] for r in records[start:start + 6]] == list(EMOTIONS)
        assert len({json.dumps(r["fluency"]) for r in records[start:start + 6]}) == 1   # one reply, one rating
        assert all(r["judge"]["fluent_match"] == (r["judge"]["match"] and r["judge"]["fluent"])
                   for r in records[start:start + 6])
    assert summary["per_emotion"]["fear"] == 0.0


class Untouchable(Sequence):
    """A split that fails the moment anything reads it."""

    def __getitem__(self, index):
        raise AssertionError("the test split was read")

    def __len__(self):
        raise AssertionError("the test split was read")


def test_tuning_never_reads_the_test_split(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    train_only = dataclasses.replace(ctx, test=Untouchable(),
                                     preset=dataclasses.replace(ctx.preset, tune_groups=1, tune_extensions=1))
    circuit = modulate.run_scale_sweep(train_only)
    steering = steer.run_sweep(train_only, upstream.directions(train_only)["dirs_mlp"])
    for summary in (circuit, steering):
        assert summary["split"] == "train" and summary["items"] == 6
        assert summary["groups"] == [groups(ctx.train)[0].key]
    assert not (ctx.run.path / modulate.STAGE).exists() and not (ctx.run.path / steer.STAGE).exists()


def test_modulation_uses_the_lambda_tuned_on_train(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    ctx = dataclasses.replace(ctx, preset=dataclasses.replace(ctx.preset, tune_groups=2, tune_extensions=1))
    summary = modulate.run(ctx, scale_sweep=True)
    sweep = json.loads((ctx.run.path / modulate.SWEEP_STAGE / "sweep.json").read_text())
    assert sweep["split"] == "train" and sweep["method"] == "circuit" and sweep["reference"] == 1.0
    assert sweep["grid"][:3] == [0.5, 1.0, 2.0] or sweep["grid"][1:4] == [0.5, 1.0, 2.0]
    assert summary["lambda"] == sweep["best"] and "tuned on the train split" in summary["lambda_source"]
    assert summary["scales"]["anger"] == pytest.approx(0.8 * sweep["best"])
    assert summary["scales"]["fear"] == pytest.approx(sweep["best"])
    records = read_jsonl(ctx.run.path / modulate.STAGE / "records.jsonl")
    assert records[0]["meta"]["scales"] == summary["scales"]
    for scale in sweep["grid"]:
        swept = read_jsonl(ctx.run.path / modulate.SWEEP_STAGE / f"lambda_{scale:g}" / "records.jsonl")
        assert {r["skeleton_id"] for r in swept} <= {r.skeleton_id for r in ctx.train}


def test_per_emotion_lambdas_come_from_each_emotions_curve(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    ctx.settings.per_emotion_dose = True
    ctx = dataclasses.replace(ctx, preset=dataclasses.replace(ctx.preset, tune_groups=1, tune_extensions=0))
    summary = modulate.run(ctx, scale_sweep=True)
    sweep = json.loads((ctx.run.path / modulate.SWEEP_STAGE / "sweep.json").read_text())
    assert summary["lambda"] == sweep["per_emotion_best"]
    assert summary["scales"]["anger"] == pytest.approx(0.8 * sweep["per_emotion_best"]["anger"])
    for e in EMOTIONS:
        curve = dict(zip(sweep["grid"], sweep["curves"]["fluent_accuracy"][e]))
        assert sweep["per_emotion_best"][e] == tuning.choose(curve, 1.0)


def test_random_circuit_control_runs_at_the_test_lambda_on_a_test_subsample(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    ctx = dataclasses.replace(ctx, preset=dataclasses.replace(ctx.preset, random_draws=5, random_groups=1))
    ctx.settings.modulation_scale = 1.5
    modulate.run(ctx)
    summary = random_circuits.run(ctx)
    assert summary["draws"] == 5 and summary["items"] == 6 and summary["scales"]["disgust"] == pytest.approx(1.5)
    assert len(summary["fluent_accuracy"]["draws"]) == 5
    assert summary["fluent_accuracy"]["mean"] == pytest.approx(np.mean(summary["fluent_accuracy"]["draws"]))
    truth = upstream.circuits(ctx)
    drawn = json.loads((ctx.run.path / random_circuits.STAGE / "draws.json").read_text())
    for draw in drawn:
        for emotion, record in draw["circuits"].items():
            random = Circuit.from_record(record)
            assert [len(n) for n in random.neurons] == [len(n) for n in truth[emotion].neurons]
            assert not random.neuron_set() & truth[emotion].neuron_set()
    first_group = {i.key for i in groups(ctx.test)[0].items}
    true_records = [r for r in read_jsonl(ctx.run.path / modulate.STAGE / "records.jsonl") if r["key"] in first_group]
    assert summary["true_circuit"]["fluent_accuracy"] == tuning.measures(true_records)["fluent_accuracy"]["overall"]
    for d in range(5):
        records = read_jsonl(ctx.run.path / random_circuits.STAGE / f"draw_{d}" / "records.jsonl")
        assert {r["key"] for r in records} == first_group and all(r["meta"]["draw"] == d for r in records)


def test_other_ranking_modulates_the_test_split_with_its_circuits(ctx, monkeypatch):
    fake_fluency(monkeypatch)
    assert "skipped" in other_ranking.run(ctx)
    modulate.run(ctx)
    other = ctx.run.stage("circuit") / circuit_stage.OTHER_RANKING_DIR
    other.mkdir()
    for emotion, circuit in random_circuits_of(ctx.config, seed=7).items():
        write_json(other / f"{emotion}.json", circuit.to_record({"model_hash": model_hash(ctx), "ranking": "causal"}))
    summary = other_ranking.run(ctx)
    records = read_jsonl(ctx.run.path / other_ranking.STAGE / "records.jsonl")
    assert summary["ranking"] == "causal" and [r["key"] for r in records] == [i.key for i in items(ctx.test)]
    assert records[0]["meta"]["ranking"] == "causal"
    assert summary["scales"] == json.loads((ctx.run.path / modulate.STAGE / "done.json").read_text())["summary"]["scales"]
