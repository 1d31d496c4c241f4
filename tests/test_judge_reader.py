"""The reader judge: pooled reader features, artefacts read with a checked hash, deterministic verdicts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emojax.data.sev import EMOTIONS
from emojax.judge import make_judge
from emojax.judge.artifact import MANIFEST, ArtifactError, write_manifest
from emojax.judge.fit import lda_from_moments, weighted_moments
from emojax.judge.offline import ARTIFACT_DIR, CLASSES, DEFAULT_ARTIFACT, OfflineJudge
from emojax.judge.reader import ReaderSpec, reader_features
from emojax.judge.reader_judge import DEFAULT_READER_ARTIFACT, FORMAT_VERSION, ReaderJudge
from emojax.runs.atomic import NPZ_META_KEY, write_npz
from stage_fixtures import tiny_loaded_model

TEXTS = ["Ugh, that is revolting.", "The train left on time.", "Wow, I did not expect that at all!",
         "", "I'm so scared of what comes next, what if it all goes wrong and nobody is there to help us?"]
TARGETS = ["disgust", "anger", "surprise", "sadness", "fear"]
SPEC = ReaderSpec(model="tiny", layers=(1, 3), max_tokens=24)


@pytest.fixture(scope="module")
def tiny():
    return tiny_loaded_model(seed=3)


def tiny_artifact(folder: Path, model, ngram_weight: float = 0.5) -> Path:
    """A reader judge for the tiny random model (random head), beside a copy of the shipped n-gram artefact."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEFAULT_ARTIFACT, folder / DEFAULT_ARTIFACT.name)
    width = len(SPEC.layers) * model.config.d_model
    rng = np.random.default_rng(0)
    ngram = OfflineJudge(folder / DEFAULT_ARTIFACT.name)
    meta = {"format": FORMAT_VERSION, "version": "test", "classes": list(CLASSES), "reader": SPEC.to_json(),
            "reader_hash": model.source_hash,
            "ngram": {"artifact": ngram.path.name, "sha256": ngram.sha256, "weight": ngram_weight}}
    path = folder / "reader_judge.npz"
    write_npz(path, {"head_weights": rng.normal(size=(width, len(CLASSES))).astype(np.float32),
                     "head_bias": np.zeros(len(CLASSES), np.float32), "mean": np.zeros(width, np.float32),
                     "scale": np.ones(width, np.float32), "target_offset": np.zeros(len(EMOTIONS), np.float32)},
              meta)
    write_manifest(folder, [path, ngram.path])
    return path


def test_reader_features_depend_on_the_text_alone(tiny):
    together = reader_features(tiny, TEXTS, SPEC, batch_size=4)
    assert together.shape == (len(TEXTS), 2 * tiny.config.d_model)
    alone = np.concatenate([reader_features(tiny, [t], SPEC, batch_size=4) for t in TEXTS])
    np.testing.assert_array_equal(alone, together)
    np.testing.assert_array_equal(together[3], 0.0)  # the empty reply
    # A different layer choice reads different states; longer replies are cut at max_tokens.
    assert not np.allclose(reader_features(tiny, TEXTS[:1], ReaderSpec("tiny", (0,), 24)), together[:1, :32])
    cut = ReaderSpec("tiny", SPEC.layers, max_tokens=3)
    np.testing.assert_array_equal(reader_features(tiny, ["abcdef"], cut), reader_features(tiny, ["abc"], cut))


def test_reader_spec_is_checked_and_round_trips(tiny):
    with pytest.raises(ValueError, match="layers"):
        ReaderSpec(layers=())
    assert ReaderSpec.from_json(json.loads(json.dumps(SPEC.to_json()))) == SPEC
    with pytest.raises(ValueError, match="outside tiny's 4 layers"):
        reader_features(tiny, ["a"], ReaderSpec("tiny", (4,), 8))


def test_the_judge_is_deterministic(tmp_path, tiny):
    """A repeated call, a fresh load and any batch composition give the same verdicts and scores."""
    path = tiny_artifact(tmp_path, tiny)
    judge = ReaderJudge(path, model=tiny)
    first = judge(TEXTS, TARGETS)
    assert first.match[3] == 0 and first.errors[3] == "empty text"
    for other in (judge(TEXTS, TARGETS), ReaderJudge(path, model=tiny)(TEXTS, TARGETS)):
        np.testing.assert_array_equal(other.match, first.match)
        np.testing.assert_array_equal(other.scores, first.scores)
    alone = [judge([t], [e]) for t, e in zip(TEXTS, TARGETS)]
    assert [int(a.match[0]) for a in alone] == first.match.tolist()
    # The reader features are bit-identical; the heads' float32 products round per batch shape.
    np.testing.assert_allclose(np.concatenate([a.scores for a in alone]), first.scores, rtol=1e-5, atol=1e-7)
    # The n-gram half counts: with weight 0 the scores differ.
    reader_only = ReaderJudge(tiny_artifact(tmp_path / "r", tiny, ngram_weight=0.0), model=tiny)
    assert reader_only.ngram is None and not np.allclose(reader_only(TEXTS, TARGETS).scores, first.scores)


def test_artefacts_load_with_a_checked_hash(tmp_path, tiny):
    judge = ReaderJudge(tiny_artifact(tmp_path, tiny), model=tiny)
    manifest = json.loads((tmp_path / MANIFEST).read_text())["sha256"]
    described = {a["file"]: a["sha256"] for a in judge.describe()["artifacts"]}
    assert described == {"reader_judge.npz": manifest["reader_judge.npz"],
                         DEFAULT_ARTIFACT.name: manifest[DEFAULT_ARTIFACT.name]}
    # A reader with other weights than the head was fitted on is refused.
    with pytest.raises(ArtifactError, match="weight hash"):
        ReaderJudge(tmp_path / "reader_judge.npz", model=tiny_loaded_model(seed=4))(TEXTS[:1], TARGETS[:1])


@pytest.mark.parametrize("name", ["reader_judge.npz", DEFAULT_ARTIFACT.name])
def test_a_corrupted_artefact_fails_with_one_line(tmp_path, tiny, name):
    path = tiny_artifact(tmp_path, tiny)
    target = tmp_path / name
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError) as caught:
        ReaderJudge(path, model=tiny)
    message = str(caught.value)
    assert "\n" not in message and name in message and "corrupt" in message


def test_an_unreadable_file_fails_with_one_line(tmp_path):
    path = tmp_path / "reader_judge.npz"
    path.write_bytes(b"not a zip file at all")
    write_manifest(tmp_path, [path])
    with pytest.raises(ArtifactError) as caught:
        ReaderJudge(path)
    assert "\n" not in str(caught.value) and "not a readable npz" in str(caught.value)
    write_npz(path, {"weights": np.zeros(3)})
    write_manifest(tmp_path, [path])
    with pytest.raises(ArtifactError, match=NPZ_META_KEY):
        ReaderJudge(path)


def test_shipped_artefacts_match_the_manifest():
    manifest = json.loads((ARTIFACT_DIR / MANIFEST).read_text())["sha256"]
    judge = ReaderJudge()  # the reader model loads on first use only
    assert manifest[DEFAULT_READER_ARTIFACT.name] == judge.sha256
    assert judge.ngram is None or manifest[judge.ngram.path.name] == judge.ngram.sha256
    sidecar = json.loads(DEFAULT_READER_ARTIFACT.with_suffix(".json").read_text())
    assert sidecar["artifact_sha256"] == judge.sha256
    assert sidecar["training_command"].startswith("python -m experiments.judge_training.transfer")
    assert {"no_llama", "no_smollm2", "all"} <= set(sidecar["held_out"])


def test_shipped_judge_reproduces_the_trainer():
    """The real reader and the shipped head give the log-probabilities the trainer recorded."""
    judge = make_judge("reader")
    probe = json.loads(DEFAULT_READER_ARTIFACT.with_suffix(".json").read_text())["probe"]
    np.testing.assert_allclose(judge.log_probs(probe["texts"]), probe["log_probs"], atol=2e-4)


def test_lda_head_separates_classes_and_sums_moments():
    rng = np.random.default_rng(1)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    labels = np.repeat(np.arange(3), 40)
    x = centres[labels] + rng.normal(size=(120, 4))
    weight = np.ones(120)
    w, b = lda_from_moments(*weighted_moments(x, labels, weight, 4), shrinkage=0.3)
    assert w.shape == (4, 4) and b.shape == (4,)
    assert np.mean((x @ w + b).argmax(1) == labels) > 0.95
    assert b[3] < -1e8 and not w[:, 3].any()  # class 3 never seen: never predicted
    # Moments of two halves add up to the moments of the whole (the cross-validation relies on it).
    halves = [weighted_moments(x[part], labels[part], weight[part], 4) for part in (slice(0, 60), slice(60, 120))]
    for whole, first, second in zip(weighted_moments(x, labels, weight, 4), *halves):
        np.testing.assert_allclose(first + second, whole)
    with pytest.raises(ValueError, match="shrinkage"):
        lda_from_moments(*weighted_moments(x, labels, weight, 4), shrinkage=1.5)
