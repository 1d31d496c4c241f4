"""Rate replies written by anything: the judge's match, the fluency gate, and fluent_match.

Input rows (one JSON object per line) hold `text`, `emotion` (the target) and the prompt the reply
answered: either `scenario` + `event`, rendered with the neutral prompt of method.md §4.2 (the
message `emojax.method.prompts.neutral_messages` builds), or `messages`, a chat message list that starts
with a system message. Output rows are the input rows plus `match`, `fluent`, `fluent_match`,
`perplexity` (under the rating model, given the prompt; null for an empty text) and `reason` (the
judge's, or its error). Rating itself (length checks, buckets by length, resumable chunks, the
judge-failure rule) is emojax.judge.rate_chunks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from emojax.data.sev import EMOTIONS
from emojax.judge.fluency import FluencyRule
from emojax.judge.rate_chunks import Rows, rate_in_memory
from emojax.method.prompts import NEUTRAL_SYSTEM, Messages, chat, user_message
from emojax.runs import InputError

OUTPUT_FIELDS = ("match", "fluent", "fluent_match", "perplexity", "reason")


def _field_error(path: Path, line: int, field: str, problem: str) -> InputError:
    return InputError(f"{path} line {line}: field {field!r} {problem}")


def _string(row: Mapping[str, Any], field: str, path: Path, line: int) -> str:
    if field not in row:
        raise _field_error(path, line, field, "is missing")
    if not isinstance(row[field], str):
        raise _field_error(path, line, field, f"must be a string, got {type(row[field]).__name__}")
    if "\0" in row[field]:
        raise _field_error(path, line, field, f"holds a NUL character (at {row[field].index(chr(0))}); remove it")
    return row[field]


def _messages(value: Any, path: Path, line: int) -> Messages:
    if not isinstance(value, list) or not value:
        raise _field_error(path, line, "messages", "must be a non-empty list of {role, content} messages")
    for j, message in enumerate(value):
        if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise _field_error(path, line, "messages", f"entry {j} must be an object with string role and content")
        if "\0" in message["content"]:
            raise _field_error(path, line, "messages", f"entry {j} holds a NUL character; remove it")
    if value[0]["role"] != "system":
        raise _field_error(path, line, "messages", "must start with a system message (method.md §4.4)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def prompt_of(row: Mapping[str, Any], path: Path, line: int) -> Messages:
    """The conversation a row's reply answered: its `messages`, or the neutral prompt of scenario + event."""
    has_messages = "messages" in row
    has_scenario = "scenario" in row or "event" in row
    if has_messages and has_scenario:
        raise _field_error(path, line, "messages", "and scenario/event are both given; give one of them")
    if has_messages:
        return _messages(row["messages"], path, line)
    if not has_scenario:
        raise _field_error(path, line, "scenario", "is missing (give scenario + event, or messages)")
    return chat(NEUTRAL_SYSTEM, user_message(_string(row, "scenario", path, line), _string(row, "event", path, line)))


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[Messages]]:
    """Every row of a JSON-lines file and its prompt; the first bad row fails with its line number and field."""
    found = read_numbered_rows(path)
    return found.rows, found.prompts


def read_numbered_rows(path: str | Path) -> Rows:
    """`read_rows` with each row's line number."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a JSON-lines file")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    numbers, rows, prompts = [], [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        _string(row, "text", path, number)
        if _string(row, "emotion", path, number) not in EMOTIONS:
            raise _field_error(path, number, "emotion", f"is {row['emotion']!r}; expected one of {list(EMOTIONS)}")
        prompts.append(prompt_of(row, path, number))
        rows.append(row)
        numbers.append(number)
    if not rows:
        raise InputError(f"{path}: no rows to rate")
    return Rows(path, numbers, rows, prompts)


def rate(rows: Sequence[Mapping[str, Any]], prompts: Sequence[Messages], *, model: Any, judge: Any,
         rule: FluencyRule, batch_size: int) -> list[dict[str, Any]]:
    """The input rows with match, fluent, fluent_match, perplexity and reason added (rows bucketed by
    length, in memory; the rate command's resumable form is emojax.judge.rate_chunks.rate_to_file)."""
    numbered = Rows(Path("<rows>"), list(range(1, len(rows) + 1)), [dict(r) for r in rows], list(prompts))
    return rate_in_memory(numbered, model=model, judge=judge, rule=rule, batch_size=batch_size)
