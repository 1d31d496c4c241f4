"""Chat conversations to a left-padded token batch, and generated ids back to reply texts.

Rendering and tokenisation are those of emojax.method.prompts (method.md §4.4): the checkpoint's chat template
with the generation prompt appended, then the tokenizer's default special-token handling.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from emojax.method.prompts import DEFAULT_DATE_STRING, tokenize_prompts

Messages = Sequence[Mapping[str, str]]


def is_conversation(value: Any) -> bool:
    """A non-empty sequence of mappings (messages), as opposed to a token array."""
    return (isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0
            and all(isinstance(m, Mapping) for m in value))


def encode_chats(tokenizer: Any, conversations: Sequence[Messages], *,
                 date_string: str = DEFAULT_DATE_STRING) -> tuple[np.ndarray, np.ndarray]:
    """Render and tokenise every conversation; return the left-padded (tokens, mask) batch, [B, T]."""
    for index, messages in enumerate(conversations):
        if not is_conversation(messages):
            raise TypeError(f"chat: prompt {index} must be a non-empty list of {{'role', 'content'}} "
                            f"messages, got {type(messages).__name__}")
        for j, message in enumerate(messages):
            if not {"role", "content"} <= message.keys():
                raise TypeError(f"chat: prompt {index}, message {j} lacks 'role' or 'content'")
    batch = tokenize_prompts(tokenizer, [[dict(m) for m in c] for c in conversations],
                             date_string=date_string)
    return batch.tokens, batch.mask


def decode_replies(tokenizer: Any, tokens: np.ndarray) -> list[str]:
    """Generated ids [B, N] (negative = padding after the end) -> texts, special tokens skipped, stripped."""
    return [tokenizer.decode([int(t) for t in row if t >= 0], skip_special_tokens=True).strip()
            for row in np.asarray(tokens)]
