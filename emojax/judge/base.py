"""What every emotion judge returns and promises (method.md §4.3).

A judge is told the target emotion of each text and answers the binary question "does the style of
this text match the target?". Failures (an empty text, an unparsable reply, an API error after its
retries) are match 0 with an error message, so they count as non-matches and stay countable.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np

from emojax.data.sev import EMOTIONS


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """Verdicts for n (text, target) pairs.

    match    int64 [n], 0 or 1
    reasons  n short strings ("" where the judge gives none)
    errors   n entries, None or why the verdict failed (such rows have match 0)
    scores   optional float32 [n, 6]: per-emotion scores in EMOTIONS order (probabilities for the
             offline judge), for calibration and blind six-way reports
    replies  optional raw replies of a generative judge ("" where nothing was asked), for audits
    """

    match: np.ndarray
    reasons: list[str]
    errors: list[str | None]
    scores: np.ndarray | None = None
    replies: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.match)
        if len(self.reasons) != n or len(self.errors) != n:
            raise ValueError(f"JudgeResult: {n} matches, {len(self.reasons)} reasons and "
                             f"{len(self.errors)} errors")
        if self.replies is not None and len(self.replies) != n:
            raise ValueError(f"JudgeResult: {n} matches but {len(self.replies)} replies")
        if self.scores is not None and self.scores.shape != (n, len(EMOTIONS)):
            raise ValueError(f"JudgeResult.scores has shape {self.scores.shape}, "
                             f"expected ({n}, {len(EMOTIONS)})")
        if not set(np.unique(self.match).tolist()) <= {0, 1}:
            raise ValueError("JudgeResult.match must hold only 0 and 1")

    @property
    def n_errors(self) -> int:
        return sum(error is not None for error in self.errors)


class Judge(Protocol):
    """`judge(texts, targets)` plus a JSON-able description for manifests."""

    identity: str  # short, stable: names the judge and its version in run fingerprints

    def __call__(self, texts: Sequence[str], targets: Sequence[str]) -> JudgeResult: ...

    def describe(self) -> dict[str, Any]: ...


def check_inputs(texts: Sequence[str], targets: Sequence[str]) -> None:
    """Equal lengths, string texts and known target emotions; errors name the first bad row."""
    if len(texts) != len(targets):
        raise ValueError(f"judge: {len(texts)} texts but {len(targets)} targets")
    for i, (text, target) in enumerate(zip(texts, targets)):
        if not isinstance(text, str):
            raise TypeError(f"judge: text {i} is {type(text).__name__}, expected str")
        if target not in EMOTIONS:
            raise ValueError(f"judge: target {i} is {target!r}; expected one of {EMOTIONS}")
