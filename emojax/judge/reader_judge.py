"""The reader judge: a linear head on a fixed reader model's pooled states, optionally with the n-gram judge.

A fixed reader (emojax.judge.reader; the embedded SmolLM2-135M-Instruct by default) reads each reply
alone, whatever model wrote it; its mean-pooled `resid_post` states at a few layers, centred, feed a
linear 7-way head (six emotions + "none"): linear discriminant analysis with the pooled covariance
shrunk towards its diagonal, fitted in closed form by `python -m experiments.judge_training.transfer --ship=...`. Where the artefact names an n-gram artefact
(emojax.judge.offline) with a weight w > 0, the class log-probabilities are the weighted mean
(1 - w) log p_reader + w log p_ngram, renormalised. The match rule is the offline judge's.

The artefact (`reader_judge.npz`) holds the head and the standardisation; its `__meta__` names the
reader (model, layers, tokens read, the reader's weight hash), the n-gram artefact and its SHA-256,
and the held-out figures. Both files are read with the hashes `manifest.json` records.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emojax.judge.artifact import ArtifactError, load_checked_npz
from emojax.judge.base import JudgeResult, check_inputs
from emojax.judge.offline import ARTIFACT_DIR, CLASSES, OfflineJudge, log_softmax, verdicts
from emojax.judge.reader import READER_BATCH_SIZE, ReaderSpec, reader_features
from emojax.runs.atomic import NPZ_META_KEY

DEFAULT_READER_ARTIFACT = ARTIFACT_DIR / "reader_judge.npz"
FORMAT_VERSION = 1


class ReaderJudge:
    """`ReaderJudge()(texts, targets) -> JudgeResult`; the reader model is loaded on first use unless given."""

    def __init__(self, path: str | Path = DEFAULT_READER_ARTIFACT, *, model: Any = None, batch_size: int = READER_BATCH_SIZE):
        self.path = Path(path)
        arrays, self.sha256 = load_checked_npz(self.path, require_manifest=self.path.parent == ARTIFACT_DIR)
        if NPZ_META_KEY not in arrays:
            raise ArtifactError(f"{self.path}: no {NPZ_META_KEY!r} member; not a reader judge artefact")
        self.meta = json.loads(str(arrays[NPZ_META_KEY]))
        if self.meta.get("format") != FORMAT_VERSION or tuple(self.meta.get("classes", ())) != CLASSES:
            raise ArtifactError(f"{self.path}: format {self.meta.get('format')!r} / classes "
                                f"{self.meta.get('classes')!r}; this emojax reads format {FORMAT_VERSION}")
        self.reader = ReaderSpec.from_json(self.meta["reader"])
        self.head_weights = arrays["head_weights"].astype(np.float32)
        self.head_bias = arrays["head_bias"].astype(np.float32)
        self.mean = arrays["mean"].astype(np.float32)
        self.scale = arrays["scale"].astype(np.float32)
        self.target_offset = arrays["target_offset"].astype(np.float32)
        if self.head_weights.shape != (self.mean.shape[0], len(CLASSES)) or self.scale.shape != self.mean.shape:
            raise ArtifactError(f"{self.path}: head {self.head_weights.shape}, mean {self.mean.shape} and scale "
                                f"{self.scale.shape} do not fit together")
        self.ngram_weight = float(self.meta["ngram"]["weight"])
        self.ngram = self._ngram_judge() if self.ngram_weight > 0 else None
        self.batch_size = batch_size
        self._model = model
        self.version = str(self.meta.get("version", ""))
        self.identity = f"reader:{self.version}:{self.sha256[:12]}"

    def _ngram_judge(self) -> OfflineJudge:
        ngram = OfflineJudge(self.path.parent / self.meta["ngram"]["artifact"])
        if ngram.sha256 != self.meta["ngram"]["sha256"]:
            raise ArtifactError(f"{self.path}: its n-gram artefact {ngram.path.name} has SHA-256 "
                                f"{ngram.sha256[:16]}..., it was fitted with {self.meta['ngram']['sha256'][:16]}...")
        return ngram

    @property
    def model(self) -> Any:
        """The reader, loaded once; it must be the very weights the head was fitted on."""
        if self._model is None:
            from emojax.loading import load_model

            self._model = load_model(self.reader.model)
        if self._model.source_hash != self.meta["reader_hash"]:
            raise ArtifactError(f"{self.path}: the reader {self._model.name} has weight hash "
                                f"{self._model.source_hash[:16]}..., the head was fitted on "
                                f"{self.meta['reader_hash'][:16]}...")
        return self._model

    def describe(self) -> dict[str, Any]:
        artifacts = [{"file": self.path.name, "sha256": self.sha256}]
        if self.ngram is not None:
            artifacts.append({"file": self.ngram.path.name, "sha256": self.ngram.sha256})
        return {"name": "reader", "version": self.version, "artifacts": artifacts,
                "reader": {**self.reader.to_json(), "weights_hash": self.meta["reader_hash"]},
                "ngram_weight": self.ngram_weight, "held_out": self.meta.get("held_out")}

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """[n, F] pooled reader states of the texts (the one forward per batch this judge costs)."""
        return reader_features(self.model, texts, self.reader, batch_size=self.batch_size)

    def log_probs_from(self, features: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """[n, 7] log-probabilities over CLASSES from the reader features of `texts`."""
        logp = log_softmax(((features - self.mean) / self.scale) @ self.head_weights + self.head_bias)
        if self.ngram is not None:
            logp = log_softmax((1 - self.ngram_weight) * logp + self.ngram_weight * self.ngram.log_probs(texts))
        return logp

    def log_probs(self, texts: Sequence[str]) -> np.ndarray:
        return self.log_probs_from(self.features(texts), texts)

    def __call__(self, texts: Sequence[str], targets: Sequence[str]) -> JudgeResult:
        check_inputs(texts, targets)
        if not texts:
            return verdicts(np.zeros((0, len(CLASSES)), np.float32), texts, targets, self.target_offset)
        return verdicts(self.log_probs(texts), texts, targets, self.target_offset)

