"""Emotion judges: does the style of a text match its target emotion (method.md §4.3)?

    judge = make_judge("offline")            # default: shipped classifier, no network
    judge = make_judge("http:gpt-4o-mini")   # the paper's judge; key from $OPENAI_API_KEY
    judge = make_judge("llm:smollm2-135m-instruct")  # any local instruct model through emojax
    result = judge(texts, targets)           # JudgeResult: match, reasons, errors, scores
    judge.describe()                         # JSON for manifests (never holds a credential)
"""
from __future__ import annotations

from emojax.judge.base import Judge, JudgeResult

__all__ = ["Judge", "JudgeResult", "make_judge"]

SPEC_HELP = ('"offline", "offline:<artefact.npz>", "http:<model>" or "llm:<model name or path>"')


def make_judge(spec: str = "offline", *, timeout_s: float | None = None, deadline_s: float | None = None) -> Judge:
    """Build a judge from a flag value: "offline" (the default), "offline:<artefact.npz>",
    "http:<model>" (OpenAI-compatible endpoint) or "llm:<model name or path>". `timeout_s` (per
    request) and `deadline_s` (per verdict) apply to an HTTP judge; None keeps its defaults."""
    kind, _, argument = spec.partition(":")
    if kind not in ("offline", "http", "llm"):
        raise ValueError(f"unknown judge spec {spec!r}; expected {SPEC_HELP}")
    if kind == "offline":
        from emojax.judge.offline import DEFAULT_ARTIFACT, OfflineJudge

        return OfflineJudge(argument or DEFAULT_ARTIFACT)
    if not argument:
        raise ValueError(f"judge spec {spec!r} names no model; expected {SPEC_HELP}")
    if kind == "http":
        from emojax.judge.http import HttpJudge

        limits = {k: v for k, v in (("timeout_s", timeout_s), ("deadline_s", deadline_s)) if v is not None}
        return HttpJudge(argument, **limits)
    from emojax.judge.llm import LlmJudge

    return LlmJudge(argument)
