"""The three protocol prompts (method.md §4), chat-template rendering and left-padded tokenisation.

Every stage builds its prompts here, so a prompt is byte-identical wherever it is used ([D15], T12).
The system strings of the emotion and neutral prompts are exact and must not be reworded; the
judge prompt is emojax's canonical paraphrase of the paper's, with its two verbatim lines
`Target emotion: {emotion}` and `Text:`.
"""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from emojax.data.sev import EMOTIONS, Item, SevRecord

DEFAULT_DATE_STRING = "15 Sep 2025"  # date of the official SEV elicitation run [D14]
# A token of a byte-level BPE vocabulary rarely spans more than a few characters of prose, so a
# record this many characters per position long cannot fit; refusing it before tokenising keeps a
# huge scenario from stalling the tokenizer.
CHARS_PER_POSITION = 32

LENGTH_LINE = "Keep the reply to at most two sentences."
NEUTRAL_SYSTEM = LENGTH_LINE

JUDGE_SYSTEM = (
    "You are a careful rater.\n"
    "You will be given a target emotion and a text.\n"
    "Decide whether the style of the text matches the target emotion, among these emotions: "
    f"{list(EMOTIONS)}.\n"
    "Judge the tone and attitude of the text, not the valence of its content."
)
JUDGE_USER_TEMPLATE = (
    "Target emotion: {emotion}\n"
    "Text:\n"
    "{text}\n"
    "Decide whether the style of the text matches the target emotion.\n"
    'Return compact JSON with exactly two keys: "match" (0 or 1) and "reason" (a short string).'
)

Messages = list[dict[str, str]]


def emotion_system(emotion: str) -> str:
    """`Always reply in {emotion}.` and the length line, joined by a single newline (§4.1)."""
    _check_emotion(emotion)
    return f"Always reply in {emotion}.\n{LENGTH_LINE}"


def user_message(scenario: str, event: str) -> str:
    """`{scenario}` + newline + `{event}` (§4.1, §4.2)."""
    return f"{scenario}\n{event}"


def chat(system: str, user: str) -> Messages:
    """A [system, user] conversation; the explicit system message keeps templates (e.g. Qwen2.5)
    from inserting their default one (§4.4)."""
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def emotion_messages(source: SevRecord | Item, emotion: str | None = None,
                     valence: str | None = None) -> Messages:
    """The emotion prompt (§4.1) for an item, or for a record with `emotion` and `valence` given."""
    record, valence, emotion = _resolve(source, valence, emotion, needs_emotion=True)
    return chat(emotion_system(emotion), user_message(record.scenario, record.event(valence)))


def neutral_messages(source: SevRecord | Item, valence: str | None = None) -> Messages:
    """The neutral prompt (§4.2): no emotion instruction, so the six emotions of a group share it."""
    record, valence, _ = _resolve(source, valence, None, needs_emotion=False)
    return chat(NEUTRAL_SYSTEM, user_message(record.scenario, record.event(valence)))


def judge_messages(text: str, emotion: str) -> Messages:
    """The judge prompt (§4.3) asking whether `text` is written in the style of `emotion`."""
    _check_emotion(emotion)
    return chat(JUDGE_SYSTEM, JUDGE_USER_TEMPLATE.format(emotion=emotion, text=text))


def _resolve(source: SevRecord | Item, valence: str | None, emotion: str | None, *,
             needs_emotion: bool) -> tuple[SevRecord, str, str | None]:
    if isinstance(source, Item):
        for name, given, own in (("valence", valence, source.valence), ("emotion", emotion, source.emotion)):
            if given is not None and given != own:
                raise ValueError(f"item {source.key} has {name} {own!r}, but {given!r} was passed")
        return source.record, source.valence, source.emotion
    if not isinstance(source, SevRecord):
        raise TypeError(f"expected a SevRecord or an Item, got {type(source).__name__}")
    if valence is None or (needs_emotion and emotion is None):
        missing = "valence and emotion" if needs_emotion else "valence"
        raise ValueError(f"record {source.skeleton_id}: pass the {missing} (or pass an Item)")
    source.event(valence)  # validates the valence
    return source, valence, emotion


def _check_emotion(emotion: str) -> None:
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")


# ---------------------------------------------------------------------------------------------
# Judge replies

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|$)", re.DOTALL)


def parse_judge_reply(text: str | None) -> tuple[int, str, str | None]:
    """(match, reason, error) from a judge reply (§4.3).

    A Markdown code fence around the JSON is removed first. An empty reply, unparsable JSON, a
    non-object, a missing `match` key or a `match` other than 0/1 all give match 0 with `error`
    set, so judge failures count as non-matches yet stay countable. `reason` is informational:
    when absent it is "" and is not an error.
    """
    if text is None or not text.strip():
        return 0, "", "empty reply"
    body = text.strip()
    fenced = _FENCE.search(body)
    if fenced is not None:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        return 0, "", f"unparsable JSON ({err.msg})"
    if not isinstance(obj, dict):
        return 0, "", "the reply JSON is not an object"
    reason = obj.get("reason", "")
    reason = reason if isinstance(reason, str) else json.dumps(reason)
    if "match" not in obj:
        return 0, reason, "missing key 'match'"
    match = _as_binary(obj["match"])
    if match is None:
        return 0, reason, f"'match' must be 0 or 1, got {obj['match']!r}"
    return match, reason, None


def _as_binary(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


# ---------------------------------------------------------------------------------------------
# Rendering and tokenisation (§4.4)


def render(tokenizer: Any, messages: Sequence[dict[str, str]], *,
           date_string: str = DEFAULT_DATE_STRING) -> str:
    """The checkpoint's chat template applied to `messages`, generation prompt appended.

    `date_string` reaches templates that print a date (Llama 3.x); others ignore it. The clock is
    never read, so a prompt renders identically on every day [D14].
    """
    if not messages or messages[0].get("role") != "system":
        raise ValueError("prompts must start with an explicit system message (method.md §4.4)")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{type(tokenizer).__name__} has no chat template; emojax needs an "
                         "instruction-tuned checkpoint's tokenizer")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                         date_string=date_string)


class PromptBatch(NamedTuple):
    """Left-padded token batch. Row i holds its prompt in the last `lengths[i]` columns."""

    tokens: np.ndarray      # [B, T] int32, pad id in the padding
    mask: np.ndarray        # [B, T] bool, True on real tokens
    lengths: np.ndarray     # [B] int32, T_p of each prompt
    bos_counts: np.ndarray  # [B] int32, leading BOS tokens of each prompt (2 on Llama 3: T1)

    @property
    def positions(self) -> np.ndarray:
        """[B, T] int32 position ids that skip the left padding (0 at each prompt's first token)."""
        return np.maximum(np.cumsum(self.mask, axis=1, dtype=np.int32) - 1, 0)


def tokenize_prompts(tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], *,
                     date_string: str = DEFAULT_DATE_STRING, single_bos: bool = False,
                     pad_multiple: int = 1) -> PromptBatch:
    """Render and tokenise a list of conversations into one left-padded batch.

    Tokenisation uses the tokenizer's default special-token handling, as the official code did:
    on Llama 3 the template's BOS plus the tokenizer's own gives two leading BOS tokens, which is
    the default here; `single_bos=True` collapses a leading run of BOS to one (the [D14] option).
    `pad_multiple` rounds the width up, so that a few padded shapes serve many batches under jit.
    The pad id is the tokenizer's, or 0 when it has none.
    """
    if not prompts:
        raise ValueError("no prompts to tokenise")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    texts = [render(tokenizer, m, date_string=date_string) for m in prompts]
    rows = [list(ids) for ids in tokenizer(texts)["input_ids"]]
    bos_id = tokenizer.bos_token_id
    if single_bos and bos_id is not None:
        rows = [ids[max(count_leading_bos(ids, bos_id) - 1, 0):] for ids in rows]
    lengths = np.array([len(ids) for ids in rows], dtype=np.int32)
    if lengths.min() == 0:
        raise ValueError("a prompt tokenised to zero tokens")
    width = -(-int(lengths.max()) // pad_multiple) * pad_multiple
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, ids in enumerate(rows):
        tokens[i, width - len(ids):] = ids
        mask[i, width - len(ids):] = True
    bos_counts = np.array([count_leading_bos(ids, bos_id) for ids in rows], dtype=np.int32)
    return PromptBatch(tokens, mask, lengths, bos_counts)


def count_leading_bos(ids: Sequence[int], bos_id: int | None) -> int:
    """How many BOS tokens open `ids` (0 when the tokenizer defines no BOS)."""
    if bos_id is None:
        return 0
    count = 0
    for token in ids:
        if token != bos_id:
            break
        count += 1
    return count
