"""Is a reply fluent? Four measures per reply and the `fluent` rule fitted on rated replies.

Measures (floats; the `fluency` block of every judged record):

    perplexity   exp(mean negative log-likelihood of the reply tokens) under the unmodified model,
                 given the reply's own prompt (emojax.judge.perplexity: one forward, no generation);
                 word salad and invented words are improbable. NaN for an empty reply.
    distinct_1   distinct words / words, and distinct_2 the same for adjacent word pairs (distinct-n):
                 low for a looping reply. Words are runs of letters (inner apostrophes kept), so a string
                 of digits or symbols has no words and both are 0; a reply too short for a pair has
                 distinct_2 = 1.
    repetition   the share of the reply's words taken by its most frequent word of four or more letters
                 (shorter function words recur in any sentence): high for a reply looping on a phrase or
                 on one word ("anger is anger. Anger is ..."); 0 without such a word.

The rule (`FluencyRule`) is a logistic regression over (log perplexity, distinct_1, distinct_2,
repetition), fitted by `python -m experiments.judge_training.train` on replies rated by careful reading and shipped
as `artifacts/fluency_rule.json`. Perplexity is the model's own: the shipped rule was fitted on the
default model's perplexities, so with another model family its threshold is a starting point to check.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

MEASURES = ("perplexity", "distinct_1", "distinct_2", "repetition")
RULE_FEATURES = ("log_perplexity", "distinct_1", "distinct_2", "repetition")
REPETITION_MIN_LETTERS = 4
ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_RULE = ARTIFACT_DIR / "fluency_rule.json"
RULE_FORMAT = 1
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters (any script), apostrophes inside a word kept."""
    return _WORD_RE.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams; 0 without any word, 1 when the words are too few for an n-gram."""
    if not tokens:
        return 0.0
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition(tokens: Sequence[str], min_letters: int = REPETITION_MIN_LETTERS) -> float:
    """Occurrences of the most frequent word of at least `min_letters` letters / all words (0 without one)."""
    long_words = [t for t in tokens if len(t) >= min_letters]
    if not long_words:
        return 0.0
    return collections.Counter(long_words).most_common(1)[0][1] / len(tokens)


def text_measures(text: str) -> dict[str, float]:
    """distinct_1, distinct_2 and repetition of one reply."""
    tokens = words(text)
    return {"distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
            "repetition": repetition(tokens)}


def measures(perplexities: Sequence[float], texts: Sequence[str]) -> list[dict[str, float]]:
    """The four measures of each reply, given the replies' perplexities."""
    if len(perplexities) != len(texts):
        raise ValueError(f"fluency: {len(perplexities)} perplexities for {len(texts)} texts")
    return [{"perplexity": float(p), **text_measures(t)} for p, t in zip(perplexities, texts)]


def as_json(row: Mapping[str, float]) -> dict[str, float | None]:
    """The four measures for a JSON record: a perplexity that is not finite (an empty reply) becomes None."""
    out: dict[str, float | None] = {k: float(row[k]) for k in MEASURES}
    if not math.isfinite(out["perplexity"]):
        out["perplexity"] = None
    return out


def rule_features(rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """[n, 4] float64 features of the rule; a row without a finite perplexity gets NaN."""
    out = np.empty((len(rows), len(RULE_FEATURES)))
    for i, row in enumerate(rows):
        ppl = math.nan if row["perplexity"] is None else float(row["perplexity"])
        log_ppl = math.log(ppl) if math.isfinite(ppl) and ppl > 0 else math.nan
        out[i] = (log_ppl, row["distinct_1"], row["distinct_2"], row["repetition"])
    return out


@dataclasses.dataclass(frozen=True)
class FluencyRule:
    """fluent = sigmoid(((features - mean) / scale) . weights + bias) > 0.5; no finite perplexity: not fluent."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("mean", "scale", "weights"):
            if len(getattr(self, name)) != len(RULE_FEATURES):
                raise ValueError(f"FluencyRule.{name} needs {len(RULE_FEATURES)} values ({', '.join(RULE_FEATURES)}), "
                                 f"got {len(getattr(self, name))}")
        if min(self.scale) <= 0:
            raise ValueError(f"FluencyRule.scale must be positive, got {self.scale}")

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights) + self.bias

    def fluent_of_features(self, features: np.ndarray) -> np.ndarray:
        logits = self.logits(features)
        return np.where(np.isfinite(logits), logits > 0, False).astype(np.int64)

    def fluent(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """int64 [n] 0/1 for rows of measures (dicts with MEASURES)."""
        return self.fluent_of_features(rule_features(rows))

    def to_json(self) -> dict[str, Any]:
        return {"format": RULE_FORMAT, "features": list(RULE_FEATURES), "mean": list(self.mean),
                "scale": list(self.scale), "weights": list(self.weights), "bias": self.bias, **dict(self.meta)}

    @property
    def identity(self) -> str:
        core = {k: v for k, v in self.to_json().items() if k in ("format", "features", "mean", "scale", "weights",
                                                                   "bias")}
        return "fluency:" + hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def load(cls, path: str | Path = DEFAULT_RULE) -> "FluencyRule":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fluency rule {path} is missing; fit one with `python -m experiments.judge_training.train`")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != RULE_FORMAT:
            raise ValueError(f"{path}: fluency rule format {data.get('format')!r}, this emojax reads {RULE_FORMAT}")
        if data.get("features") != list(RULE_FEATURES):
            raise ValueError(f"{path}: features {data.get('features')} differ from {list(RULE_FEATURES)}")
        try:
            core = {name: tuple(float(v) for v in data[name]) for name in ("mean", "scale", "weights")}
            bias = float(data["bias"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a fluency rule ({err!r})") from None
        meta = {k: v for k, v in data.items() if k not in ("format", "features", "mean", "scale", "weights", "bias")}
        return cls(**core, bias=bias, meta=meta)
