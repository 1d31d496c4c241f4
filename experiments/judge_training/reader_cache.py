"""Reader-model features of the training texts, cached on disk keyed by content hash.

The reader's forward is the slow part of training (minutes per thousand replies on a small CPU), so each
text's pooled states are computed once: `<cache dir>/judge/reader-<model hash>-<spec hash>/` holds npz
chunks of (keys, features), a key being the SHA-256 of the text. A refit, another layer choice among the
cached ones, or a new data file only computes the texts not seen before. Chunks are written atomically, so
an interrupted run keeps every finished chunk.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import logging

from emojax.judge.reader import ReaderSpec, reader_features
from emojax.runs.atomic import write_npz
from emojax.weights.cache import resolve_cache_dir

CHUNK = 256
MAX_TOKENS = 64  # tokens of a reply that the reader reads


def candidate_layers(n_layers: int) -> tuple[int, ...]:
    """The layers whose pooled states are cached for a reader of `n_layers` (every third from the third);
    designs pick among them."""
    return tuple(range(2, n_layers, 3))


CANDIDATE_LAYERS = candidate_layers(30)  # the default reader's, SmolLM2-135M-Instruct's 30 layers


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_folder(model_hash: str, spec: ReaderSpec) -> Path:
    spec_hash = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()
    return resolve_cache_dir() / "judge" / f"reader-{model_hash[:16]}-{spec_hash[:12]}"


def _load(folder: Path) -> dict[str, np.ndarray]:
    stored: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            stored.update(zip(data["keys"].tolist(), data["features"]))
    return stored


def cached_features(model: Any, texts: Sequence[str], spec: ReaderSpec, *, batch_size: int) -> np.ndarray:
    """[N, len(layers) * D] features of `texts`, computing and storing only the texts not cached yet."""
    folder = cache_folder(model.source_hash, spec)
    stored = _load(folder) if folder.is_dir() else {}
    keys = [text_key(t) for t in texts]
    # Sorted by length, so a chunk's replies mostly share one row width (fewer padded batches).
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in stored}.items(), key=lambda kt: (len(kt[1]), kt[0]))
    logging.info("reader features: %d texts (%d distinct), %d to compute", len(texts), len(set(keys)), len(missing))
    for start in range(0, len(missing), CHUNK):
        part = missing[start:start + CHUNK]
        feats = reader_features(model, [t for _, t in part], spec, batch_size=batch_size)
        chunk_keys = [k for k, _ in part]
        name = hashlib.sha256("".join(chunk_keys).encode()).hexdigest()[:16]
        write_npz(folder / f"{name}.npz", {"keys": np.array(chunk_keys), "features": feats})
        stored.update(zip(chunk_keys, feats))
        logging.info("reader features: %d / %d computed", start + len(part), len(missing))
    return np.stack([stored[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
