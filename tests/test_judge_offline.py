"""The offline judge: feature hashing, the softmax-regression fit, the shipped artefact, make_judge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from emojax.data.sev import EMOTIONS
from emojax.judge import JudgeResult, make_judge
from emojax.judge.features import FeatureSpec, SparseRows, featurize
from emojax.judge.fit import fit_softmax_regression
from emojax.judge.offline import CLASSES, DEFAULT_ARTIFACT, OfflineJudge, match_rule
from emojax.runs.atomic import write_npz

SMALL = FeatureSpec(n_buckets=2**10)


# ---------------------------------------------------------------------------------------------
# Features


def test_features_are_pinned_unit_norm_and_case_insensitive():
    rows = featurize(["Wow, what a surprise!", "WOW, what a SURPRISE!", ""], SMALL)
    assert rows.n_rows == 3
    first = slice(rows.offsets[0], rows.offsets[1])
    second = slice(rows.offsets[1], rows.offsets[2])
    np.testing.assert_array_equal(rows.indices[first], rows.indices[second])
    assert np.isclose(np.sum(rows.values[first] ** 2), 1.0, atol=1e-5)
    # Fixed hash: the same buckets on every machine and process (Python's hash() is salted).
    assert rows.indices[first][:6].tolist() == PINNED_BUCKETS


PINNED_BUCKETS = [0, 10, 12, 45, 47, 48]


def test_feature_spec_validation_and_round_trip():
    with pytest.raises(ValueError, match="power of two"):
        FeatureSpec(n_buckets=1000)
    with pytest.raises(ValueError, match="at least one"):
        FeatureSpec(char_ngrams=(), word_ngrams=())
    spec = FeatureSpec(n_buckets=2**12, char_ngrams=(3,), word_ngrams=(1, 2, 3))
    assert FeatureSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_sparse_dot_take_and_padded_agree_with_dense():
    rows = featurize(["one two three", "", "four five", "six"], SMALL)
    dense = np.zeros((rows.n_rows, SMALL.n_buckets), np.float32)
    for i in range(rows.n_rows):
        s, e = rows.offsets[i], rows.offsets[i + 1]
        dense[i, rows.indices[s:e]] = rows.values[s:e]
    weights = np.random.default_rng(0).normal(size=(SMALL.n_buckets, 3)).astype(np.float32)
    np.testing.assert_allclose(rows.dot(weights), dense @ weights, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows.take([2, 0]).dot(weights), (dense @ weights)[[2, 0]], rtol=1e-5, atol=1e-5)
    idx, val = rows.padded()
    np.testing.assert_allclose((weights[idx] * val[..., None]).sum(1), dense @ weights, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Fitting


def test_fit_separates_toy_classes_and_generalises_to_new_phrasing():
    texts = ["I am furious and outraged", "this makes me furious", "outraged by the delay",
             "so sad and heartbroken", "heartbroken, tears again", "sad news today",
             "what a joyful wonderful day", "wonderful and joyful news", "joyful at last"]
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    rows = featurize(texts, SMALL)
    w, b = fit_softmax_regression(rows, labels, n_classes=3, n_buckets=SMALL.n_buckets, l2=1e-4)
    assert w.shape == (SMALL.n_buckets, 3) and b.shape == (3,)
    assert ((rows.dot(w) + b).argmax(1) == labels).all()
    unseen = featurize(["furious!", "heartbroken", "a wonderful surprise"], SMALL)
    assert (unseen.dot(w) + b).argmax(1).tolist() == [0, 1, 2]


def test_fit_rejects_bad_labels():
    rows = featurize(["a", "b"], SMALL)
    with pytest.raises(ValueError, match="labels"):
        fit_softmax_regression(rows, [0, 3], n_classes=3, n_buckets=SMALL.n_buckets, l2=1e-3)


def test_match_rule_requires_the_target_to_beat_none_and_the_other_emotions():
    logp = np.log(np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],    # anger clear
                            [0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7],      # "none" wins
                            [0.2, 0.0, 0.0, 0.0, 0.0, 0.6, 0.2]]) + 1e-9)
    zero = np.zeros(6, np.float32)
    assert match_rule(logp, np.array([0, 0, 0]), zero).tolist() == [1, 0, 0]
    assert match_rule(logp, np.array([5, 5, 5]), zero).tolist() == [0, 0, 1]
    # log(0.3) + 1 > log(0.7), but log(0.2) + 1 < log(0.6): an offset cannot outvote a clear rival.
    offset = np.array([1.0, 0, 0, 0, 0, 0], np.float32)
    assert match_rule(logp, np.array([0, 0, 0]), offset).tolist() == [1, 1, 0]


# ---------------------------------------------------------------------------------------------
# The shipped artefact


@pytest.fixture(scope="module")
def judge() -> OfflineJudge:
    return OfflineJudge()


def test_artifact_is_small_and_documented(judge):
    assert DEFAULT_ARTIFACT.stat().st_size < 4 * 2**20
    sidecar = json.loads(DEFAULT_ARTIFACT.with_suffix(".json").read_text())
    assert sidecar["artifact_sha256"] == judge.sha256
    assert sidecar["training_command"].startswith("python -m experiments.judge_training.train")
    held_out = sidecar["held_out"]
    for key in ("six_way_accuracy_prompted_accepted", "binary_prompted_accepted_and_rejected",
                "binary_unprompted", "offset_per_fold"):
        assert key in held_out
    for condition in ("prompting", "steering", "circuit", "overall"):
        assert set(held_out["rated"][condition]) == {"fluent", "match", "fluent_match"}
    description = judge.describe()
    assert description["artifact_sha256"] == judge.sha256 and description["version"]
    assert judge.identity.startswith("offline:")


def test_probe_log_probs_match_training(judge):
    """The features and inference reproduce the trainer's outputs bit-for-bit (to rounding)."""
    probe = json.loads(DEFAULT_ARTIFACT.with_suffix(".json").read_text())["probe"]
    np.testing.assert_allclose(judge.log_probs(probe["texts"]), probe["log_probs"], atol=2e-4)


def test_verdicts_shapes_and_clear_cases(judge):
    texts = ["Ugh, that is absolutely revolting and disgusting.", "I'm so happy, this is wonderful news!",
             "Oh no, I'm terrified of what might happen next.", "", "   "]
    result = judge(texts, ["disgust", "happiness", "fear", "anger", "sadness"])
    assert isinstance(result, JudgeResult)
    assert result.match.dtype == np.int64 and result.match.shape == (5,)
    assert result.match.tolist() == [1, 1, 1, 0, 0]
    assert result.errors[:3] == [None, None, None] and result.errors[3:] == ["empty text"] * 2
    assert result.scores.shape == (5, 6) and np.all(result.scores >= 0)
    assert np.all(result.scores.sum(1) <= 1 + 1e-5)
    # The same texts judged against the wrong emotion do not match.
    wrong = judge(texts[:3], ["happiness", "disgust", "happiness"])
    assert wrong.match.tolist() == [0, 0, 0]


def test_the_judge_is_deterministic(judge):
    """A fresh load, a repeated call and any batch composition give the same verdicts and scores."""
    texts = ["Ugh, that is absolutely revolting.", "The train left on time.", "I can't believe it, wow!",
             "I'm sorry for any confusion. I'm here to help.", "Sisters, I am sad for you, dear ones."]
    targets = ["disgust", "anger", "surprise", "sadness", "sadness"]
    first = judge(texts, targets)
    for other in (judge(texts, targets), OfflineJudge()(texts, targets)):
        np.testing.assert_array_equal(other.match, first.match)
        np.testing.assert_array_equal(other.scores, first.scores)
        assert other.reasons == first.reasons
    alone = [judge([t], [e]) for t, e in zip(texts, targets)]
    assert [int(a.match[0]) for a in alone] == first.match.tolist()
    np.testing.assert_allclose(np.concatenate([a.scores for a in alone]), first.scores, rtol=1e-6)


def test_bad_inputs_are_rejected(judge):
    with pytest.raises(ValueError, match="target 1"):
        judge(["a", "b"], ["anger", "joy"])
    with pytest.raises(ValueError, match="2 texts but 1 targets"):
        judge(["a", "b"], ["anger"])


def test_a_malformed_artefact_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    write_npz(bad, {"weights": np.zeros((4, 7), np.float16)})
    with pytest.raises(ValueError, match="__meta__"):
        OfflineJudge(bad)
    with pytest.raises(FileNotFoundError, match="judge_training.train"):
        OfflineJudge(tmp_path / "missing.npz")


def test_make_judge_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOJAX_CACHE_DIR", str(tmp_path))
    assert isinstance(make_judge("offline"), OfflineJudge)
    assert isinstance(make_judge(f"offline:{DEFAULT_ARTIFACT}"), OfflineJudge)
    from emojax.judge.http import HttpJudge

    http = make_judge("http:gpt-4o-mini")
    assert isinstance(http, HttpJudge) and http.model == "gpt-4o-mini"
    with pytest.raises(ValueError, match="names no model"):
        make_judge("llm:")
    with pytest.raises(ValueError, match="unknown judge spec"):
        make_judge("oracle")


def test_classes_follow_the_emotion_order():
    assert CLASSES[:6] == EMOTIONS and CLASSES[6] == "none"


def test_empty_batch(judge):
    result = judge([], [])
    assert result.match.shape == (0,) and result.scores.shape == (0, 6)


def test_sparse_rows_of_no_text():
    rows = featurize([], SMALL)
    assert isinstance(rows, SparseRows) and rows.n_rows == 0
