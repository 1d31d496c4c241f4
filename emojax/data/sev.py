"""SEV (Scenario–Event with Valence) records: loading, validation and item enumeration.

The file format is the official one (method.md §3.1): JSON lines, one record per line,

    {"theme": str, "scenario": str, "event": {"positive": str, "neutral": str, "negative": str},
     "skeleton_id": str}

`load_sev` checks the schema strictly and reports the first problem as a `DatasetError` naming the
file, the line and the field. Blank lines are skipped; extra top-level keys are ignored (they carry
no meaning here), but an unknown key inside `event` is an error, since it can only be a misspelt or
unsupported valence. Style rules for *writing* stimuli (no emotion words, sentence shape, length)
are separate, in `lint_records`, because the official file itself breaks a few of them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from emojax.data.banned_words import find_banned_words

EMOTIONS: tuple[str, ...] = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
VALENCES: tuple[str, ...] = ("positive", "neutral", "negative")

# Theme name (spelled exactly as in the official file) -> skeleton_id prefix.
THEME_PREFIXES: dict[str, str] = {
    "Work/Job": "work",
    "School/Academia": "school",
    "Personal relationships": "relation",
    "Customer service/Shopping": "shopping",
    "Public services/Administration": "administration",
    "Health/Medical": "health",
    "Housing/Living facilities": "living",
    "Travel/Transportation": "travel",
}

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_SPLITS: tuple[str, ...] = ("train", "test")
# The official SEV file lives next to the repository checkout, never inside it.
OFFICIAL_SEV_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "official" / "sev.jsonl"

_REQUIRED_FIELDS = ("theme", "scenario", "event", "skeleton_id")


class DatasetError(ValueError):
    """A dataset file or argument that cannot be used; the message names file, line and field."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        location = ""
        if path is not None:
            location = f"{path}:{line}: " if line is not None else f"{path}: "
        if field is not None:
            location += f"field '{field}': "
        super().__init__(location + message)
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field


@dataclasses.dataclass(frozen=True)
class SevRecord:
    """One scenario with its three valenced events."""

    skeleton_id: str
    theme: str
    scenario: str
    positive: str
    neutral: str
    negative: str

    def event(self, valence: str) -> str:
        _check_valence(valence)
        return getattr(self, valence)

    def to_json(self) -> dict:
        """The record in the official schema and key order."""
        return {
            "theme": self.theme,
            "scenario": self.scenario,
            "event": {v: self.event(v) for v in VALENCES},
            "skeleton_id": self.skeleton_id,
        }


@dataclasses.dataclass(frozen=True)
class Item:
    """One (record, valence, emotion) triple: the unit of elicitation and evaluation."""

    record: SevRecord
    valence: str
    emotion: str

    def __post_init__(self) -> None:
        _check_valence(self.valence)
        _check_emotion(self.emotion)

    @property
    def key(self) -> str:
        return f"{self.record.skeleton_id}__{self.valence}__{self.emotion}"

    @property
    def event(self) -> str:
        return self.record.event(self.valence)

    @property
    def skeleton_id(self) -> str:
        return self.record.skeleton_id


@dataclasses.dataclass(frozen=True)
class Group:
    """One (record, valence) pair: the six emotion variants share its prompt content."""

    record: SevRecord
    valence: str

    def __post_init__(self) -> None:
        _check_valence(self.valence)

    @property
    def key(self) -> str:
        return f"{self.record.skeleton_id}__{self.valence}"

    @property
    def items(self) -> tuple[Item, ...]:
        return tuple(Item(self.record, self.valence, e) for e in EMOTIONS)


def items(records: Iterable[SevRecord], emotions: Sequence[str] = EMOTIONS) -> list[Item]:
    """All items in canonical order: record (file order) -> valence -> emotion."""
    for e in emotions:
        _check_emotion(e)
    return [Item(r, v, e) for r in records for v in VALENCES for e in emotions]


def groups(records: Iterable[SevRecord]) -> list[Group]:
    """All (record, valence) groups in canonical order: record (file order) -> valence."""
    return [Group(r, v) for r in records for v in VALENCES]


def _check_valence(valence: str) -> None:
    if valence not in VALENCES:
        raise ValueError(f"unknown valence {valence!r}; expected one of {VALENCES}")


def _check_emotion(emotion: str) -> None:
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")


# ---------------------------------------------------------------------------------------------
# Loading


def load_sev(path: str | Path) -> tuple[SevRecord, ...]:
    """Read and validate a SEV JSON-lines file; records are returned in file order."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read the file ({err.strerror or err})", path=path) from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(f"not valid UTF-8 (byte offset {err.start})", path=path, line=line) from err

    lines = text.split("\n")
    ends_with_newline = text.endswith("\n")
    records: list[SevRecord] = []
    first_line_of: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        unterminated_last = number == len(lines) and not ends_with_newline
        obj = _parse_line(line, path, number, truncated_possible=unterminated_last)
        record = _record_from_json(obj, path, number)
        if record.skeleton_id in first_line_of:
            raise DatasetError(
                f"duplicate skeleton_id {record.skeleton_id!r} (first seen on line "
                f"{first_line_of[record.skeleton_id]})", path=path, line=number, field="skeleton_id")
        first_line_of[record.skeleton_id] = number
        records.append(record)
    if not records:
        raise DatasetError("no records (the file is empty or holds only blank lines)", path=path)
    return tuple(records)


def _parse_line(line: str, path: Path, number: int, *, truncated_possible: bool) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        # A parse failure that runs into the end of the last, unterminated line is a cut-off
        # write (an interrupted copy or download), which deserves its own message.
        ran_out = err.msg.startswith("Unterminated string") or err.pos >= len(line.rstrip())
        if truncated_possible and ran_out:
            raise DatasetError(f"truncated last line: the record ends before its JSON is complete "
                               f"({err.msg})", path=path, line=number) from err
        raise DatasetError(f"invalid JSON ({err.msg} at column {err.colno})",
                           path=path, line=number) from err


def _record_from_json(obj: object, path: Path, number: int) -> SevRecord:
    if not isinstance(obj, dict):
        raise DatasetError(f"expected a JSON object, got {_json_type(obj)}", path=path, line=number)
    for name in _REQUIRED_FIELDS:
        if name not in obj:
            raise DatasetError("missing", path=path, line=number, field=name)
    fields = {name: _text(obj[name], path, number, name) for name in ("skeleton_id", "theme", "scenario")}
    event = obj["event"]
    if not isinstance(event, dict):
        raise DatasetError(f"expected an object with keys {list(VALENCES)}, got {_json_type(event)}",
                           path=path, line=number, field="event")
    for key in event:
        if key not in VALENCES:
            raise DatasetError(f"unknown valence {key!r}; expected {list(VALENCES)}",
                               path=path, line=number, field="event")
    for valence in VALENCES:
        if valence not in event:
            raise DatasetError("missing valence", path=path, line=number, field=f"event.{valence}")
        fields[valence] = _text(event[valence], path, number, f"event.{valence}")
    return SevRecord(**fields)


def _text(value: object, path: Path, number: int, field: str) -> str:
    if not isinstance(value, str):
        raise DatasetError(f"expected a string, got {_json_type(value)}", path=path, line=number, field=field)
    if not value.strip():
        raise DatasetError("empty text", path=path, line=number, field=field)
    if "\0" in value:  # it would go into the prompt, where no tokenizer means anything by it
        raise DatasetError(f"holds a NUL character (at {value.index(chr(0))}); remove it", path=path, line=number,
                           field=field)
    return value


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# Dataset arguments


def resolve_dataset(spec: str | Path) -> Path:
    """Path of a dataset argument.

    `"bundled:train"` / `"bundled:test"`: the SEV-style splits shipped with emojax;
    `"official"`: the official SEV file at ../shared/data/official/sev.jsonl next to the checkout
    (pass its path explicitly when it lives elsewhere); anything else: a path to a SEV file.
    """
    text = str(spec)
    if text.startswith("bundled:"):
        split = text.removeprefix("bundled:")
        if split not in BUNDLED_SPLITS:
            raise DatasetError(f"unknown bundled split {split!r}; expected one of "
                               f"{[f'bundled:{s}' for s in BUNDLED_SPLITS]}")
        return BUNDLED_DIR / f"{split}.jsonl"
    if text == "official":
        if not OFFICIAL_SEV_PATH.is_file():
            raise DatasetError(f"the official SEV file is not at {OFFICIAL_SEV_PATH}; "
                               "pass its path instead of 'official'")
        return OFFICIAL_SEV_PATH
    path = Path(text).expanduser()
    if path.is_dir():
        raise DatasetError("is a directory, not a SEV .jsonl file (expected a SEV .jsonl path, 'official', "
                           "'bundled:train' or 'bundled:test')", path=path)
    if not path.is_file():
        raise DatasetError("no such file (expected a SEV .jsonl path, 'official', "
                           "'bundled:train' or 'bundled:test')", path=path)
    return path


def load_dataset(spec: str | Path) -> tuple[SevRecord, ...]:
    """`load_sev(resolve_dataset(spec))`."""
    return load_sev(resolve_dataset(spec))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file bytes: identifies the exact dataset in run manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Style rules for writing stimuli


@dataclasses.dataclass(frozen=True)
class LintIssue:
    skeleton_id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.skeleton_id}: {self.field}: {self.message}"


SCENARIO_WORDS = (10, 16)
EVENT_WORDS = (12, 20)
_ID_PATTERN = re.compile(r"^([a-z]+)_(\d{2})$")
_FIRST_PERSON = re.compile(r"\b(I|[Mm]y|[Mm]e|[Ww]e|[Oo]ur|[Uu]s)\b")


def lint_records(records: Iterable[SevRecord], *, scenario_words: tuple[int, int] = SCENARIO_WORDS,
                 event_words: tuple[int, int] = EVENT_WORDS) -> list[LintIssue]:
    """Departures from the SEV writing rules of docs/data.md; an empty list means none.

    Checked: no banned emotion word (banned_words.py); surrounding whitespace; the scenario is
    first-person, one clause with no final period, within `scenario_words` words; each event is
    one sentence ending in a period, within `event_words` words; known themes carry their
    `<prefix>_<NN>` id.
    """
    issues: list[LintIssue] = []
    for r in records:
        def add(field: str, message: str) -> None:
            issues.append(LintIssue(r.skeleton_id, field, message))

        texts = {"scenario": r.scenario, **{f"event.{v}": r.event(v) for v in VALENCES}}
        for field, text in texts.items():
            banned = find_banned_words(text)
            if banned:
                add(field, f"emotion words {sorted(set(banned))}")
            if text != text.strip():
                add(field, "leading or trailing whitespace")
        n = len(r.scenario.split())
        if not scenario_words[0] <= n <= scenario_words[1]:
            add("scenario", f"{n} words, expected {scenario_words[0]}-{scenario_words[1]}")
        if r.scenario.rstrip().endswith((".", "!", "?")):
            add("scenario", "ends with sentence punctuation; the event sentence follows it")
        if not _FIRST_PERSON.search(r.scenario):
            add("scenario", "not first-person")
        for v in VALENCES:
            event = r.event(v).strip()
            n = len(event.split())
            if not event_words[0] <= n <= event_words[1]:
                add(f"event.{v}", f"{n} words, expected {event_words[0]}-{event_words[1]}")
            if not event.endswith("."):
                add(f"event.{v}", "does not end with a period")
            if re.search(r"[.!?]\s+[A-Z]", event):
                add(f"event.{v}", "more than one sentence")
        prefix = THEME_PREFIXES.get(r.theme)
        match = _ID_PATTERN.match(r.skeleton_id)
        if prefix is not None and (match is None or match.group(1) != prefix):
            add("skeleton_id", f"expected '{prefix}_<NN>' for theme {r.theme!r}")
    return issues
