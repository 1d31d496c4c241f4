"""The local-LLM judge: parsing and error accounting with canned replies, then the real default model."""
from __future__ import annotations

import importlib
import types

import numpy as np
import pytest

from emojax.method.prompts import parse_judge_reply

generation_module = pytest.importorskip("emojax.generation.loop")
if not hasattr(generation_module, "generate"):
    pytest.skip("emojax.generation.loop.generate is not available yet", allow_module_level=True)

from emojax.judge.llm import LlmJudge  # noqa: E402

TEXTS = ["What a wonderful day, I am thrilled!", "Ugh, that is revolting.", "",
         "The meeting is at noon.", "I can't believe it, wow!"]
TARGETS = ["happiness", "disgust", "anger", "fear", "surprise"]


def test_canned_replies_are_parsed_and_failures_counted(monkeypatch):
    canned = ['```json\n{"match": 1, "reason": "joyful"}\n```', '{"match": 1, "reason": "revulsion"}',
              "I think it does not match.", '{"match": 0}']
    seen = {}

    def fake_generate(model, prompts, *, max_new_tokens, batch_size):
        seen["prompts"], seen["max_new_tokens"] = prompts, max_new_tokens
        return types.SimpleNamespace(texts=canned[: len(prompts)])

    monkeypatch.setattr(importlib.import_module("emojax.generation.loop"), "generate", fake_generate)
    judge = LlmJudge(types.SimpleNamespace(name="fake", source_hash="abc"), max_new_tokens=32)
    result = judge(TEXTS, TARGETS)
    # The empty text is never sent; the other four are, in order, each with its own target.
    assert len(seen["prompts"]) == 4 and seen["max_new_tokens"] == 32
    assert "Target emotion: fear" in seen["prompts"][2][1]["content"]
    np.testing.assert_array_equal(result.match, [1, 1, 0, 0, 0])
    assert result.errors[0] is None and result.errors[1] is None and result.errors[4] is None
    assert result.errors[2] == "empty text" and "unparsable" in result.errors[3]
    assert result.n_errors == 2
    assert result.replies[2] == "" and result.replies[3] == canned[2]


@pytest.mark.real_model
@pytest.mark.slow
def test_default_model_as_judge(default_model):
    judge = LlmJudge(default_model, max_new_tokens=24, batch_size=4)
    texts, targets = TEXTS[:2] + TEXTS[3:], TARGETS[:2] + TARGETS[3:]
    result = judge(texts, targets)
    assert result.match.shape == (4,) and set(result.match.tolist()) <= {0, 1}
    assert len(result.replies) == 4 and all(isinstance(r, str) for r in result.replies)
    for reply, match, error in zip(result.replies, result.match, result.errors):
        expected_match, _, expected_error = parse_judge_reply(reply)
        assert (error is None) == (expected_error is None), reply
        assert match == expected_match
    assert result.n_errors == sum(parse_judge_reply(r)[2] is not None for r in result.replies)
    assert judge.identity.startswith("llm:")
