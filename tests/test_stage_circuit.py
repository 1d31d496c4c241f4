"""The circuit stage (S6e-S6f): budgets, per-layer top-k selection, the official JSON layout, overlap."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from emojax.circuit import Circuit, transferred_budget
from emojax.data import EMOTIONS
from emojax.runs import InputError, write_npz
from emojax.runs.stage_record import mark_finished, model_hash
from emojax.stages import circuit_stage
from emojax.stages.context import Settings
from stage_fixtures import make_context

OFFICIAL_KEYS = ["emotion", "K_total", "ratio_mode", "ratio_fixed", "K_alloc", "min_per_layer", "cap_ratio",
                 "summary", "layers"]


def write_upstream(ctx, seed=0):
    """Sublayer influence and component scores as the sublayer and components stages write them.
    Head scores are the same for every emotion, neuron scores differ."""
    cfg = ctx.config
    rng = np.random.default_rng(seed)
    L = cfg.n_layers
    influence = np.broadcast_to(rng.uniform(-0.2, 1.0, (1, 2, L)), (6, 2, L)).astype(np.float32)
    meta = {"model_hash": model_hash(ctx)}
    write_npz(ctx.run.stage("sublayer") / "influence.npz", {"mean_over_alpha": influence}, meta=meta)
    mark_finished(ctx.run, "sublayer", {"fake": seed}, {})
    heads = np.broadcast_to(rng.normal(size=(1, L, cfg.n_heads)), (6, L, cfg.n_heads)).astype(np.float32)
    write_npz(ctx.run.stage("components") / "neuron_stats.npz",
              {"C_mean": rng.normal(size=(6, L, cfg.d_ff)).astype(np.float32)}, meta=meta)
    write_npz(ctx.run.stage("components") / "head_stats.npz", {"mean": heads}, meta=meta)
    mark_finished(ctx.run, "components", {"fake": seed}, {})
    return influence, heads


def load_records(ctx):
    return {e: json.loads((ctx.run.path / "circuit" / f"{e}.json").read_text()) for e in EMOTIONS}


def test_circuits_use_the_transferred_budget_and_top_heads(tmp_path):
    ctx = make_context(tmp_path)
    _, heads = write_upstream(ctx)
    summary = circuit_stage.run(ctx)
    budget = transferred_budget(ctx.config)
    for emotion, record in load_records(ctx).items():
        assert list(record)[: len(OFFICIAL_KEYS)] == OFFICIAL_KEYS
        assert record["K_alloc"] == {"mlp": budget.neurons, "attention": budget.heads}
        assert record["model_hash"] == model_hash(ctx)
        circuit = Circuit.from_record(record)
        assert len(circuit.neuron_set()) == budget.neurons and len(circuit.head_set()) == budget.heads
        for layer, chosen in enumerate(circuit.heads):
            ranked = np.argsort(-heads[0, layer], kind="stable")[: len(chosen)]
            assert list(chosen) == ranked.tolist()
        assert (ctx.run.path / "circuit" / f"circuit_{emotion}.png").stat().st_size > 0
    assert summary["overlap"]["heads"] == pytest.approx(1.0)  # identical head scores and counts


def test_overlap_matches_the_circuit_files(tmp_path):
    ctx = make_context(tmp_path)
    write_upstream(ctx)
    circuit_stage.run(ctx)
    sets = {e: {(item["layer"], j) for item in r["layers"] for j in item["mlp"]["neurons"]}
            for e, r in load_records(ctx).items()}
    pairs = list(itertools.combinations(EMOTIONS, 2))
    jaccard = np.mean([len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a, b in pairs])
    coefficient = np.mean([len(sets[a] & sets[b]) / min(len(sets[a]), len(sets[b])) for a, b in pairs])
    stats = json.loads((ctx.run.path / "circuit" / "overlap.json").read_text())
    assert stats["neurons"]["jaccard_mean"] == pytest.approx(jaccard)
    assert stats["neurons"]["overlap_coefficient_mean"] == pytest.approx(coefficient)
    assert 0 < jaccard < 1
    matrix = np.asarray(stats["neurons"]["jaccard"])
    i, j = EMOTIONS.index("fear"), EMOTIONS.index("disgust")
    assert matrix[i, j] == pytest.approx(len(sets["fear"] & sets["disgust"]) / len(sets["fear"] | sets["disgust"]))


def test_literal_budget_records_what_did_not_fit(tmp_path):
    ctx = make_context(tmp_path, settings=Settings(budget="literal"))
    write_upstream(ctx)
    circuit_stage.run(ctx)
    cfg = ctx.config
    for record in load_records(ctx).values():
        assert record["K_alloc"] == {"mlp": 392, "attention": 168}
        assert record["budget_rule"] == "literal"
        # The tiny model has fewer heads than the literal budget: every head is used, the rest is deficit.
        assert record["summary"]["attention"]["used"] == cfg.n_layers * cfg.n_heads
        assert record["summary"]["attention"]["final_deficit"] == 168 - cfg.n_layers * cfg.n_heads


def test_finished_stage_is_skipped_until_its_inputs_change(tmp_path):
    ctx = make_context(tmp_path)
    write_upstream(ctx)
    circuit_stage.run(ctx)
    done = (ctx.run.path / "circuit" / "done.json").read_text()
    circuit_stage.run(ctx)
    assert (ctx.run.path / "circuit" / "done.json").read_text() == done
    write_upstream(ctx, seed=1)
    circuit_stage.run(ctx)
    assert (ctx.run.path / "circuit" / "done.json").read_text() != done


def write_causal_scores(ctx, seed=1):
    """What the causal stage writes: prompt-mean causal scores of every layer."""
    cfg = ctx.config
    rng = np.random.default_rng(seed)
    scores = {"neuron_causal": rng.normal(size=(6, cfg.n_layers, cfg.d_ff)).astype(np.float32),
              "head_causal": rng.normal(size=(6, cfg.n_layers, cfg.n_heads)).astype(np.float32)}
    write_npz(ctx.run.stage("causal") / "causal_scores.npz", scores, meta={"model_hash": model_hash(ctx)})
    mark_finished(ctx.run, "causal", {"fake": seed}, {})
    return scores


def test_causal_ranking_takes_each_layers_top_causal_components_with_the_same_allocation(tmp_path):
    analytic_ctx = make_context(tmp_path, run_name="analytic")
    write_upstream(analytic_ctx)
    assert circuit_stage.run(analytic_ctx)["other_ranking"] is None   # no causal scans: one ranking
    assert not (analytic_ctx.run.path / "circuit" / circuit_stage.OTHER_RANKING_DIR).exists()

    ctx = make_context(tmp_path, run_name="causal", settings=Settings(circuit_ranking="causal"))
    write_upstream(ctx)
    with pytest.raises(InputError, match="needs the causal scans"):
        circuit_stage.run(ctx)
    scores = write_causal_scores(ctx)
    summary = circuit_stage.run(ctx)
    assert summary["ranking"] == "causal" and summary["other_ranking"] == "analytic"
    analytic = load_records(analytic_ctx)
    other = {e: json.loads((ctx.run.path / "circuit" / circuit_stage.OTHER_RANKING_DIR / f"{e}.json").read_text())
             for e in EMOTIONS}
    for e, (emotion, record) in enumerate(load_records(ctx).items()):
        assert record["ranking"] == "causal" and other[emotion]["ranking"] == "analytic"
        assert other[emotion]["layers"] == analytic[emotion]["layers"]
        assert record["allocation_log"] == analytic[emotion]["allocation_log"]   # same budget and allocation
        circuit = Circuit.from_record(record)
        for layer, chosen in enumerate(circuit.neurons):
            ranked = np.argsort(-scores["neuron_causal"][e, layer], kind="stable")[: len(chosen)]
            assert list(chosen) == ranked.tolist()
        for layer, chosen in enumerate(circuit.heads):
            assert list(chosen) == np.argsort(-scores["head_causal"][e, layer], kind="stable")[: len(chosen)].tolist()


def test_causal_ranking_refuses_a_partial_scan(tmp_path):
    ctx = make_context(tmp_path, settings=Settings(circuit_ranking="causal"))
    write_upstream(ctx)
    scores = write_causal_scores(ctx)
    scores["neuron_causal"][:, 0] = np.nan   # layer 0 not scanned
    write_npz(ctx.run.stage("causal") / "causal_scores.npz", scores, meta={"model_hash": model_hash(ctx)})
    with pytest.raises(InputError, match="did not cover every layer"):
        circuit_stage.run(ctx)
