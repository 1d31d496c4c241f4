"""The default judge: a small linear classifier of hashed n-grams, no network, fast on a CPU.

Model (trained by `python -m experiments.judge_training.train`): a 7-way softmax regression over the six
emotions plus a "none" class (texts judged to express no target emotion), on the features of
emojax.judge.features. A text matches its target when

    log p(target) + bias[target]  >  max over the other six classes of log p(class),

i.e. the target beats every other emotion *and* "none"; the per-target offsets (zero unless the
training script calibrated them) let the rule follow how readily the reference judge accepts each
emotion. `scores` are the six emotion probabilities (they sum to 1 - p(none)).

The artefact is an .npz of plain arrays (weights stored as float16) with its metadata as JSON in
the `__meta__` member (training command, data hashes, held-out figures), read with
allow_pickle=False; a JSON copy of the metadata sits next to it for people to read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emojax.data.sev import EMOTIONS
from emojax.judge.artifact import load_checked_npz
from emojax.judge.base import JudgeResult, check_inputs
from emojax.judge.features import FeatureSpec, SparseRows, featurize
from emojax.runs.atomic import NPZ_META_KEY

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_ARTIFACT = ARTIFACT_DIR / "offline_judge.npz"
NONE_CLASS = "none"
CLASSES = (*EMOTIONS, NONE_CLASS)
FORMAT_VERSION = 1


class OfflineJudge:
    """`OfflineJudge()(texts, targets) -> JudgeResult`, loading the shipped artefact by default."""

    def __init__(self, path: str | Path = DEFAULT_ARTIFACT):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"offline judge artefact {self.path} is missing; train one with "
                                    "`python -m experiments.judge_training.train`")
        # The shipped artefacts must match their manifest; another file is checked where one lists it.
        arrays, self.sha256 = load_checked_npz(self.path, require_manifest=self.path.parent == ARTIFACT_DIR)
        self.meta = _read_meta(arrays, self.path)
        self.spec = FeatureSpec.from_json(self.meta["features"])
        self.weights = arrays["weights"].astype(np.float32)
        self.bias = arrays["bias"].astype(np.float32)
        self.target_offset = arrays["target_offset"].astype(np.float32)
        expected = {"weights": (self.spec.n_buckets, len(CLASSES)), "bias": (len(CLASSES),),
                    "target_offset": (len(EMOTIONS),)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{self.path}: array {name!r} has shape "
                                 f"{getattr(self, name).shape}, expected {shape}")
        self.version = str(self.meta.get("version", ""))
        self.identity = f"offline:{self.version}:{self.sha256[:12]}"

    def describe(self) -> dict[str, Any]:
        return {"name": "offline", "version": self.version, "artifact": self.path.name,
                "artifact_sha256": self.sha256, "features": self.spec.to_json(),
                "held_out": self.meta.get("held_out")}

    def log_probs(self, texts: Sequence[str]) -> np.ndarray:
        """[n, 7] log-probabilities over CLASSES (six emotions, then "none")."""
        return log_softmax(featurize(texts, self.spec).dot(self.weights) + self.bias)

    def log_probs_of(self, rows: SparseRows) -> np.ndarray:
        return log_softmax(rows.dot(self.weights) + self.bias)

    def __call__(self, texts: Sequence[str], targets: Sequence[str]) -> JudgeResult:
        check_inputs(texts, targets)
        return verdicts(self.log_probs(texts), texts, targets, self.target_offset)


def verdicts(logp: np.ndarray, texts: Sequence[str], targets: Sequence[str], target_offset: np.ndarray) -> JudgeResult:
    """The JudgeResult of log-probabilities [n, 7] over CLASSES: the match rule, empty texts failed."""
    target_idx = np.array([EMOTIONS.index(t) for t in targets], np.int64)
    match = match_rule(logp, target_idx, target_offset)
    empty = np.array([not t.strip() for t in texts], bool)
    match[empty] = 0
    names = np.array(CLASSES)[logp.argmax(axis=1)] if len(texts) else np.array([], str)
    reasons = [f"p({t})={np.exp(lp[i]):.2f}, top={top}" for lp, i, t, top in zip(logp, target_idx, targets, names)]
    errors = ["empty text" if e else None for e in empty]
    return JudgeResult(match=match, reasons=reasons, errors=errors,
                       scores=np.exp(logp[:, : len(EMOTIONS)]).astype(np.float32))


def match_rule(logp: np.ndarray, target_idx: np.ndarray, target_offset: np.ndarray) -> np.ndarray:
    """1 where log p(target) + offset[target] beats every other class (emotions and "none")."""
    n = len(target_idx)
    own = logp[np.arange(n), target_idx] + target_offset[target_idx]
    others = logp.copy()
    others[np.arange(n), target_idx] = -np.inf
    return (own > others.max(axis=1, initial=-np.inf)).astype(np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _read_meta(arrays: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    if NPZ_META_KEY not in arrays:
        raise ValueError(f"{path}: no {NPZ_META_KEY!r} member; not an offline judge artefact")
    meta = json.loads(str(arrays[NPZ_META_KEY]))
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: artefact format {meta.get('format')!r}, this emojax reads "
                         f"format {FORMAT_VERSION}")
    for field in ("features", "classes"):
        if field not in meta:
            raise ValueError(f"{path}: meta lacks the field {field!r}")
    if tuple(meta["classes"]) != CLASSES:
        raise ValueError(f"{path}: classes {meta['classes']} differ from {list(CLASSES)}")
    return meta
