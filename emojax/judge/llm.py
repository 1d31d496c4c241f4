"""A local instruct model as the judge, run through emojax's own generation (method.md §4.3, [D16]).

Each (text, target) becomes the judge prompt of emojax.method.prompts; the replies are generated in batches
(greedy, so a verdict is reproducible) and parsed with the shared parser. A reply that is not the
requested JSON is match 0 with its error set, so a weak judge model shows up as a high error count
rather than as silent non-matches.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from emojax.judge.base import JudgeResult, check_inputs
from emojax.method.prompts import judge_messages, parse_judge_reply


class LlmJudge:
    """`LlmJudge("smollm2-135m-instruct")(texts, targets) -> JudgeResult`.

    model: a name or path for `emojax.load_model`, or an already loaded model.
    """

    def __init__(self, model: Any, *, max_new_tokens: int = 64, batch_size: int = 16,
                 cache_dir: str | None = None):
        from emojax.loading import load_model  # heavy imports only when an LLM judge is built

        self.model = load_model(model, cache_dir=cache_dir) if isinstance(model, str) else model
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        name = getattr(self.model, "name", None) or str(model)
        self.identity = f"llm:{name}:{str(getattr(self.model, 'source_hash', ''))[:12]}"

    def describe(self) -> dict[str, Any]:
        return {"name": "llm", "model": getattr(self.model, "name", None),
                "source_hash": getattr(self.model, "source_hash", None),
                "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    def __call__(self, texts: Sequence[str], targets: Sequence[str]) -> JudgeResult:
        from emojax.generation.loop import generate

        check_inputs(texts, targets)
        asked = [i for i, text in enumerate(texts) if text.strip()]
        replies = [""] * len(texts)
        if asked:
            prompts = [judge_messages(texts[i], targets[i]) for i in asked]
            generation = generate(self.model, prompts, max_new_tokens=self.max_new_tokens,
                                  batch_size=self.batch_size)
            for i, reply in zip(asked, generation.texts):
                replies[i] = reply
        verdicts = [parse_judge_reply(reply) if text.strip() else (0, "", "empty text")
                    for text, reply in zip(texts, replies)]
        return JudgeResult(match=np.array([v[0] for v in verdicts], np.int64),
                           reasons=[v[1] for v in verdicts], errors=[v[2] for v in verdicts],
                           replies=replies)
