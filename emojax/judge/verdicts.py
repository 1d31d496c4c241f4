"""What a judge's result means for the records: the §3.3 verdict fields, a failed verdict, and the
failure rule the judged stages and `rate` share (more than MAX_JUDGE_ERROR_FRACTION failed rows fail
the run instead of counting as non-matches)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

MAX_JUDGE_ERROR_FRACTION = 0.05


def judge_failed(text: str, verdict: Mapping[str, Any]) -> bool:
    """The judge could not give a verdict on a non-empty reply (an empty reply is a non-match)."""
    return verdict["error"] is not None and bool(text.strip())


def verdicts(result: Any, n: int) -> list[dict[str, Any]]:
    """§3.3 judge fields from a JudgeResult: match (0/1), reason, error (None or the failure)."""
    match = np.asarray(result.match).astype(int).reshape(-1)
    errors, reasons = getattr(result, "errors", None), getattr(result, "reasons", None)
    errors = [None] * n if errors is None else list(errors)
    reasons = [""] * n if reasons is None else list(reasons)
    if not len(match) == len(errors) == len(reasons) == n:
        raise ValueError(f"the judge returned {len(match)} matches, {len(errors)} errors and {len(reasons)} "
                         f"reasons for {n} texts")
    if not set(match.tolist()) <= {0, 1}:
        raise ValueError(f"the judge returned matches other than 0/1: {sorted(set(match.tolist()))}")
    return [{"match": int(m), "reason": str(r), "error": None if e is None else str(e)}
            for m, r, e in zip(match, reasons, errors)]
