"""SEV loader, validator, bundled splits, banned words, cross-fit folds and subsampling."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from emojax.data import (
    BANNED_WORDS,
    EMOTIONS,
    THEME_PREFIXES,
    VALENCES,
    DatasetError,
    Group,
    Item,
    SevRecord,
    cross_fit_folds,
    cross_fit_rounds,
    file_sha256,
    find_banned_words,
    fold_of,
    groups,
    items,
    lint_records,
    load_dataset,
    load_sev,
    resolve_dataset,
    subsample,
)
from emojax.data.banned_words import banned_word_category

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "official" / "sev.jsonl"
needs_official = pytest.mark.skipif(not OFFICIAL.is_file(), reason="official SEV file not present")


@pytest.fixture(scope="module")
def train() -> tuple[SevRecord, ...]:
    return load_dataset("bundled:train")


@pytest.fixture(scope="module")
def test_split() -> tuple[SevRecord, ...]:
    return load_dataset("bundled:test")


def _good(skeleton_id: str = "work_00", **overrides) -> dict:
    record = {
        "theme": "Work/Job",
        "scenario": "I sent the weekly report to my team lead before the meeting",
        "event": {"positive": "p text.", "neutral": "n text.", "negative": "x text."},
        "skeleton_id": skeleton_id,
    }
    record.update(overrides)
    return record


def _write(tmp_path: Path, lines: list[str], *, trailing_newline: bool = True) -> Path:
    path = tmp_path / "sev.jsonl"
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# Bundled splits


@pytest.mark.parametrize("split", ["bundled:train", "bundled:test"])
def test_bundled_split_layout(split: str) -> None:
    records = load_dataset(split)
    assert len(records) == 160
    assert Counter(r.theme for r in records) == {theme: 20 for theme in THEME_PREFIXES}
    for r in records:
        assert re.fullmatch(rf"{THEME_PREFIXES[r.theme]}_\d\d", r.skeleton_id)
    assert sorted(int(r.skeleton_id[-2:]) for r in records) == sorted(list(range(20)) * 8)


@pytest.mark.parametrize("split", ["bundled:train", "bundled:test"])
def test_bundled_split_follows_the_writing_rules(split: str) -> None:
    issues = lint_records(load_dataset(split))
    assert issues == [], "\n".join(map(str, issues))


@pytest.mark.parametrize("split", ["bundled:train", "bundled:test"])
def test_bundled_split_has_no_emotion_words(split: str) -> None:
    found = {(r.skeleton_id, field): find_banned_words(text)
             for r in load_dataset(split)
             for field, text in [("scenario", r.scenario)] + [(v, r.event(v)) for v in VALENCES]}
    assert {k: v for k, v in found.items() if v} == {}


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def _most_similar_scenarios(left, right) -> tuple[float, str, str]:
    """The highest token Jaccard index between a scenario of `left` and one of `right`."""
    lt = [(r.skeleton_id, _tokens(r.scenario)) for r in left]
    rt = [(r.skeleton_id, _tokens(r.scenario)) for r in right]
    return max((len(a & b) / len(a | b), ia, ib) for ia, a in lt for ib, b in rt)


def test_train_and_test_share_no_scenario_or_near_duplicate(train, test_split) -> None:
    assert not {r.scenario for r in train} & {r.scenario for r in test_split}
    worst = _most_similar_scenarios(train, test_split)
    assert worst[0] < 0.6, worst


def test_three_events_of_a_record_are_distinct(train, test_split) -> None:
    for r in train + test_split:
        assert len({r.positive, r.neutral, r.negative}) == 3, r.skeleton_id


@needs_official
def test_bundled_splits_are_not_copies_of_the_official_file(train, test_split) -> None:
    official = load_sev(OFFICIAL)
    ours = train + test_split
    official_texts = {t for r in official for t in (r.scenario, r.positive, r.neutral, r.negative)}
    assert not official_texts & {t for r in ours for t in (r.scenario, r.positive, r.neutral, r.negative)}
    worst = _most_similar_scenarios(ours, official)
    assert worst[0] < 0.6, worst


@needs_official
def test_official_file_loads_with_the_bundled_theme_names() -> None:
    official = load_sev(OFFICIAL)
    assert len(official) == 160
    assert set(Counter(r.theme for r in official)) == set(THEME_PREFIXES)
    assert resolve_dataset("official").resolve() == OFFICIAL.resolve()


# ----------------------------------------------------------------------------------------------
# Items and groups


def test_items_enumerate_record_then_valence_then_emotion(train) -> None:
    all_items = items(train)
    assert len(all_items) == 2880
    assert [i.key for i in all_items[:7]] == (
        [f"work_00__positive__{e}" for e in EMOTIONS] + ["work_00__neutral__anger"])
    assert all_items[18].record is train[1]
    assert len({i.key for i in all_items}) == 2880
    assert all_items[0].event == train[0].positive


def test_items_with_an_emotion_subset_keep_the_given_order(train) -> None:
    subset = items(train[:1], emotions=("fear", "anger"))
    assert [i.key for i in subset[:2]] == ["work_00__positive__fear", "work_00__positive__anger"]
    with pytest.raises(ValueError, match="unknown emotion"):
        items(train, emotions=("joy",))


def test_groups_hold_the_six_emotion_items(train) -> None:
    all_groups = groups(train)
    assert len(all_groups) == 480
    assert [g.key for g in all_groups[:4]] == [
        "work_00__positive", "work_00__neutral", "work_00__negative", "work_01__positive"]
    group = all_groups[1]
    assert [i.emotion for i in group.items] == list(EMOTIONS)
    assert {i.valence for i in group.items} == {"neutral"}
    flattened = [i for g in all_groups for i in g.items]
    assert flattened == items(train)


def test_item_and_group_reject_unknown_labels(train) -> None:
    with pytest.raises(ValueError, match="unknown valence"):
        Item(train[0], "mixed", "anger")
    with pytest.raises(ValueError, match="unknown emotion"):
        Item(train[0], "positive", "joy")
    with pytest.raises(ValueError, match="unknown valence"):
        Group(train[0], "Positive")


def test_record_round_trips_through_its_json(tmp_path: Path, train) -> None:
    path = _write(tmp_path, [json.dumps(r.to_json(), ensure_ascii=False) for r in train[:5]])
    assert load_sev(path) == train[:5]
    assert list(train[0].to_json()) == ["theme", "scenario", "event", "skeleton_id"]


# ----------------------------------------------------------------------------------------------
# Loader errors


@pytest.mark.parametrize("bad_line, line_no, field, message", [
    ('{"theme": "Work/Job", "scenario": ', 2, None, "invalid JSON"),
    ("[1, 2]", 2, None, "expected a JSON object, got an array"),
    (json.dumps({k: v for k, v in _good("work_01").items() if k != "scenario"}), 2, "scenario", "missing"),
    (json.dumps(_good("work_01", event={"positive": "a.", "negative": "c."})), 2, "event.neutral",
     "missing valence"),
    (json.dumps(_good("work_01", event={"positive": "a.", "neutral": 3, "negative": "c."})), 2,
     "event.neutral", "expected a string, got a number"),
    (json.dumps(_good("work_01", event=["a.", "b.", "c."])), 2, "event", "got an array"),
    (json.dumps(_good("work_01", event={"positive": "a.", "neutral": "b.", "negative": "c.",
                                        "mixed": "d."})), 2, "event", "unknown valence 'mixed'"),
    (json.dumps(_good("work_01", theme=None)), 2, "theme", "expected a string, got null"),
    (json.dumps(_good("work_01", scenario="   ")), 2, "scenario", "empty text"),
    (json.dumps(_good("work_00")), 2, "skeleton_id", "duplicate skeleton_id 'work_00' (first seen on line 1)"),
])
def test_loader_errors_name_file_line_and_field(tmp_path: Path, bad_line, line_no, field, message) -> None:
    path = _write(tmp_path, [json.dumps(_good("work_00")), bad_line, json.dumps(_good("work_02"))])
    with pytest.raises(DatasetError) as info:
        load_sev(path)
    err = info.value
    assert err.path == str(path) and err.line == line_no and err.field == field
    assert str(err).startswith(f"{path}:{line_no}: ")
    assert message in str(err)
    if field is not None:
        assert f"field '{field}'" in str(err)


def test_truncated_last_line_is_reported_as_such(tmp_path: Path) -> None:
    cut = json.dumps(_good("work_01"))[:50]
    path = _write(tmp_path, [json.dumps(_good("work_00")), cut], trailing_newline=False)
    with pytest.raises(DatasetError, match=r":2: truncated last line"):
        load_sev(path)


def test_malformed_last_line_with_newline_is_plain_invalid_json(tmp_path: Path) -> None:
    path = _write(tmp_path, [json.dumps(_good("work_00")), json.dumps(_good("work_01"))[:50]])
    with pytest.raises(DatasetError, match=r":2: invalid JSON"):
        load_sev(path)


def test_blank_lines_and_crlf_are_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    lines = ["", json.dumps(_good("work_00")), "   ", json.dumps(_good("work_01")), "", ""]
    path = tmp_path / "sev.jsonl"
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    assert [r.skeleton_id for r in load_sev(path)] == ["work_00", "work_01"]
    path.write_bytes("\r\n".join(lines + ["{oops"]).encode("utf-8"))
    with pytest.raises(DatasetError, match=r":7: "):
        load_sev(path)


def test_last_line_without_newline_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, [json.dumps(_good("work_00")), json.dumps(_good("work_01"))],
                  trailing_newline=False)
    assert len(load_sev(path)) == 2


@pytest.mark.parametrize("content, message", [
    (b"", "no records"),
    (b"\n  \n\n", "no records"),
    (b'{"theme": "\xff"}\n', "not valid UTF-8"),
])
def test_unusable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "sev.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        load_sev(path)


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_sev(tmp_path / "absent.jsonl")
    with pytest.raises(DatasetError, match="no such file"):
        resolve_dataset(tmp_path / "absent.jsonl")


# ----------------------------------------------------------------------------------------------
# Dataset arguments and hashes


def test_resolve_dataset_arguments(tmp_path: Path) -> None:
    assert resolve_dataset("bundled:train").name == "train.jsonl"
    assert resolve_dataset("bundled:test").is_file()
    with pytest.raises(DatasetError, match="unknown bundled split 'dev'"):
        resolve_dataset("bundled:dev")
    path = _write(tmp_path, [json.dumps(_good())])
    assert resolve_dataset(str(path)) == path
    assert load_dataset(path)[0].skeleton_id == "work_00"


def test_file_sha256_hashes_the_file_bytes() -> None:
    path = resolve_dataset("bundled:train")
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) != file_sha256(resolve_dataset("bundled:test"))


# ----------------------------------------------------------------------------------------------
# Banned words and lint


@pytest.mark.parametrize("text, expected", [
    ("I was Thrilled when the parcel came.", ["thrilled"]),
    ("The clerk seemed well-pleased, then ANGRY.", ["pleased", "angry"]),
    ("It was a shocking, disgusting bill; I felt worried.", ["shocking", "disgusting", "felt", "worried"]),
    ("Nobody cried or smiled at the school’s fair.", ["cried", "smiled"]),
    ("I bought a saddle, checked the alarm clock and read the content of the memo.", []),
    ("My concern about the hurt knee was noted.", []),
])
def test_find_banned_words(text: str, expected: list[str]) -> None:
    assert find_banned_words(text) == expected


def test_banned_lists_cover_each_emotion_with_inflections() -> None:
    for emotion in EMOTIONS:
        assert emotion in BANNED_WORDS and emotion in BANNED_WORDS[emotion]
    for word in ("angrily", "saddened", "happier", "frightened", "astonishing", "revolting",
                 "upset", "excited", "delighted", "scared", "furious", "sorrowful"):
        assert banned_word_category(word) is not None, word
    assert banned_word_category("Afraid") == "fear"
    assert banned_word_category("table") is None


def test_lint_reports_each_broken_rule() -> None:
    record = SevRecord(
        skeleton_id="school_03", theme="Work/Job",
        scenario="The team was happy with the quarterly figures today.",
        positive="Good.", neutral="The team filed the report. Then they went home for the weekend.",
        negative=" The manager postponed the review until the next quarter because the data was late ")
    messages = [str(issue) for issue in lint_records([record])]
    expected = [
        "school_03: scenario: emotion words ['happy']",
        "school_03: scenario: 9 words, expected 10-16",
        "school_03: scenario: ends with sentence punctuation",
        "school_03: scenario: not first-person",
        "school_03: event.positive: 1 words, expected 12-20",
        "school_03: event.neutral: more than one sentence",
        "school_03: event.negative: leading or trailing whitespace",
        "school_03: event.negative: does not end with a period",
        "school_03: skeleton_id: expected 'work_<NN>'",
    ]
    for fragment in expected:
        assert any(m.startswith(fragment) for m in messages), (fragment, messages)
    assert len(messages) == len(expected)


# ----------------------------------------------------------------------------------------------
# Cross-fit folds and subsamples


def test_cross_fit_folds_split_00_09_from_10_19(train) -> None:
    folds = cross_fit_folds(train)
    assert {k: len(v) for k, v in folds.items()} == {"A": 80, "B": 80}
    assert all(int(r.skeleton_id[-2:]) < 10 for r in folds["A"])
    assert all(int(r.skeleton_id[-2:]) >= 10 for r in folds["B"])
    assert Counter(r.theme for r in folds["A"]) == {t: 10 for t in THEME_PREFIXES}


def test_cross_fit_rounds_go_both_ways(train) -> None:
    first, second = cross_fit_rounds(train)
    assert first.derive == second.evaluate and first.evaluate == second.derive
    assert not set(first.derive) & set(first.evaluate)
    assert set(first.derive) | set(first.evaluate) == set(train)
    assert first.derive[0].skeleton_id == "work_00"


def test_cross_fit_rejects_unusable_ids(train) -> None:
    odd = SevRecord("work_25", "Work/Job", "s", "p", "n", "x")
    with pytest.raises(DatasetError, match="00-19"):
        fold_of(odd)
    with pytest.raises(DatasetError, match="does not end in _<NN>"):
        fold_of(SevRecord("work", "Work/Job", "s", "p", "n", "x"))
    with pytest.raises(DatasetError, match="fold B is empty"):
        cross_fit_folds(train[:10])


def test_subsample_evenly_spaced_is_stratified_and_fold_balanced(train) -> None:
    sample = subsample(train, 4)
    assert len(sample) == 32
    assert Counter(r.theme for r in sample) == {t: 4 for t in THEME_PREFIXES}
    assert Counter(fold_of(r) for r in sample) == {"A": 16, "B": 16}
    assert [r.skeleton_id for r in sample[:4]] == ["work_00", "work_05", "work_10", "work_15"]
    assert list(sample) == [r for r in train if r in set(sample)]  # input order kept


def test_subsample_with_seed_is_reproducible(train) -> None:
    a, b, c = subsample(train, 3, seed=7), subsample(train, 3, seed=7), subsample(train, 3, seed=8)
    assert a == b and a != c
    assert Counter(r.theme for r in a) == {t: 3 for t in THEME_PREFIXES}
    assert list(a) == [r for r in train if r in set(a)]


def test_subsample_rejects_impossible_sizes(train) -> None:
    with pytest.raises(DatasetError, match="fewer than per_theme=21"):
        subsample(train, 21)
    with pytest.raises(ValueError, match="per_theme must be >= 1"):
        subsample(train, 0)
