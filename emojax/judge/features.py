"""Hashed word and character n-gram features for the offline emotion judge.

Texts become sparse rows in a fixed number of hash buckets, so the feature map needs no vocabulary
file and is identical on every machine: the hash is a fixed 64-bit polynomial over UTF-8 bytes with
a splitmix64 finaliser (Python's own `hash` is salted per process and cannot be used).

Each feature group (character n-grams, word n-grams) is weighted with sublinear term frequency
(1 + log count) and L2-normalised on its own, then scaled by 1/sqrt(number of groups), so every
non-empty row has unit norm and long texts do not dominate.
"""
from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse  # a dependency of jax itself

_U64 = np.uint64
_POLY = _U64(0x100000001B3)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_WORD_SALT = _U64(0x9E3779B97F4A7C15)
# Words, numbers with apostrophes inside, and the punctuation that carries tone.
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]|\.\.\.")
_SPACE_RE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which n-grams are hashed, and into how many buckets (a power of two)."""

    n_buckets: int = 2**17
    char_ngrams: tuple[int, ...] = (2, 3, 4, 5)
    word_ngrams: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.n_buckets < 2 or self.n_buckets & (self.n_buckets - 1):
            raise ValueError(f"FeatureSpec.n_buckets must be a power of two, got {self.n_buckets}")
        if not self.char_ngrams and not self.word_ngrams:
            raise ValueError("FeatureSpec needs at least one of char_ngrams, word_ngrams")
        for field in ("char_ngrams", "word_ngrams"):
            orders = getattr(self, field)
            if any(int(n) < 1 for n in orders):
                raise ValueError(f"FeatureSpec.{field} must hold positive orders, got {orders}")

    def to_json(self) -> dict[str, Any]:
        return {"n_buckets": self.n_buckets, "char_ngrams": list(self.char_ngrams),
                "word_ngrams": list(self.word_ngrams)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        return cls(n_buckets=int(data["n_buckets"]),
                   char_ngrams=tuple(int(n) for n in data["char_ngrams"]),
                   word_ngrams=tuple(int(n) for n in data["word_ngrams"]))


@dataclasses.dataclass(frozen=True)
class SparseRows:
    """CSR rows: row i holds indices[offsets[i]:offsets[i+1]] with the matching values."""

    indices: np.ndarray  # int32 [nnz]
    values: np.ndarray  # float32 [nnz]
    offsets: np.ndarray  # int64 [n + 1]

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: Sequence[int] | np.ndarray) -> "SparseRows":
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        pieces = [np.arange(s, e) for s, e in zip(starts, ends)]
        flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return SparseRows(self.indices[flat], self.values[flat], offsets)

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense [n, max_nnz] index and value arrays (value 0 pads), for jitted training."""
        lengths = np.diff(self.offsets)
        width = max(int(lengths.max(initial=0)), 1)
        idx = np.zeros((self.n_rows, width), np.int32)
        val = np.zeros((self.n_rows, width), np.float32)
        for i, (s, e) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            idx[i, : e - s] = self.indices[s:e]
            val[i, : e - s] = self.values[s:e]
        return idx, val

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """rows @ weights for weights [n_buckets, k] (float32); empty rows give zeros."""
        matrix = scipy.sparse.csr_matrix((self.values, self.indices, self.offsets),
                                         shape=(self.n_rows, weights.shape[0]))
        return np.asarray(matrix @ weights.astype(np.float32, copy=False), np.float32)


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace, pad with one space so word edges become n-grams."""
    return " " + _SPACE_RE.sub(" ", text.lower()).strip() + " "


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits (wrap-around intended)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U64(30))
        x = x * _MIX1
        x = x ^ (x >> _U64(27))
        x = x * _MIX2
        return x ^ (x >> _U64(31))


def _char_hashes(text: str, orders: tuple[int, ...]) -> np.ndarray:
    data = np.frombuffer(text.encode("utf-8"), np.uint8).astype(_U64)
    rolling = np.zeros(len(data), _U64)
    found = []
    with np.errstate(over="ignore"):
        for n in range(1, max(orders, default=0) + 1):
            m = len(data) - n + 1
            if m <= 0:
                break
            rolling[:m] = rolling[:m] * _POLY + data[n - 1 : n - 1 + m]
            if n in orders:
                found.append(_mix(rolling[:m] + _U64(n)))
    return np.concatenate(found) if found else np.zeros(0, _U64)


def _word_hashes(text: str, orders: tuple[int, ...]) -> np.ndarray:
    tokens = _TOKEN_RE.findall(text)
    if not tokens:
        return np.zeros(0, _U64)
    base = np.array([zlib.crc32(t.encode("utf-8")) for t in tokens], _U64)
    rolling = np.zeros(len(base), _U64)
    found = []
    with np.errstate(over="ignore"):
        for n in range(1, max(orders, default=0) + 1):
            m = len(base) - n + 1
            if m <= 0:
                break
            rolling[:m] = rolling[:m] * _POLY + base[n - 1 : n - 1 + m]
            if n in orders:
                found.append(_mix(rolling[:m] ^ (_WORD_SALT + _U64(n))))
    return np.concatenate(found) if found else np.zeros(0, _U64)


def _weighted_group(hashes: np.ndarray, mask: int) -> tuple[np.ndarray, np.ndarray]:
    if len(hashes) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    buckets, counts = np.unique((hashes & _U64(mask)).astype(np.int64), return_counts=True)
    values = 1.0 + np.log(counts.astype(np.float32))
    return buckets.astype(np.int32), values / np.linalg.norm(values)


def featurize_one(text: str, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique bucket indices and their values for one text."""
    norm = normalize_text(text)
    mask = spec.n_buckets - 1
    groups = []
    if spec.char_ngrams:
        groups.append(_weighted_group(_char_hashes(norm, spec.char_ngrams), mask))
    if spec.word_ngrams:
        groups.append(_weighted_group(_word_hashes(norm, spec.word_ngrams), mask))
    scale = np.float32(1.0 / np.sqrt(len(groups)))
    idx = np.concatenate([g[0] for g in groups])
    val = np.concatenate([g[1] for g in groups]) * scale
    # Merge buckets shared between groups so each index appears once.
    buckets, inverse = np.unique(idx, return_inverse=True)
    merged = np.zeros(len(buckets), np.float32)
    np.add.at(merged, inverse, val)
    return buckets.astype(np.int32), merged


def featurize(texts: Sequence[str], spec: FeatureSpec) -> SparseRows:
    """Hashed features of many texts as CSR rows (an empty text gives an empty row)."""
    rows = [featurize_one(t, spec) for t in texts]
    lengths = np.array([len(r[0]) for r in rows], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int32)
    values = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.float32)
    return SparseRows(indices.astype(np.int32), values.astype(np.float32), offsets)
