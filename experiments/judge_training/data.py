"""The labelled texts the offline judge and the fluency rule are fitted and validated on.

Two sources, both in ../shared/data:

official/   Llama-3.2-3B-Instruct replies labelled by gpt-4o-mini with the §4.3 prompt:
  llama32_3b/prompting_sev/accepted.jsonl, rejected.jsonl   prompted replies (judge API errors dropped:
                                                            their label is unknown)
  llama32_3b/steering_half/labeled_results.jsonl            replies written with no emotion instruction
  sev.jsonl                                                 scenario and event sentences: extra "none" texts,
                                                            so that a reply's content is not read as its tone
labels/smollm2_train_replies.jsonl   replies of the default model (prompting, steering, circuit modulation)
  rated by careful reading: match, fluent and the dominant emotion (its README says how).

And in this folder (labels/README.md): gemma3_270m_quick_test_replies.jsonl, the second real model's pipeline
replies rated the same way, source "gemma"; llama32_3b_steered_sample.jsonl and llama32_3b_steered_read.jsonl,
careful readings of a stratified sample of the official Llama steered replies and of all the others (keys and
labels only: the texts stay in ../shared).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emojax.data.sev import EMOTIONS
from emojax.method.prompts import NEUTRAL_SYSTEM, Messages, chat, emotion_system, user_message

# gpt-4o-mini failures recorded in the official rejected file: not verdicts about the text.
JUDGE_ERROR_PREFIXES = ("json-decode-error", "invalid-json")
RATED_FILE = "smollm2_train_replies.jsonl"
GEMMA_FILE = Path(__file__).resolve().parent / "labels" / "gemma3_270m_quick_test_replies.jsonl"
SMOLLM2_QUICK_FILE = GEMMA_FILE.with_name("smollm2_quick_test_replies.jsonl")
LLAMA_READING_FILE = Path(__file__).resolve().parent / "labels" / "llama32_3b_steered_sample.jsonl"
# Careful readings of the official steered replies the sample above does not hold: with it, all 1,440.
LLAMA_READ_FILE = LLAMA_READING_FILE.with_name("llama32_3b_steered_read.jsonl")
# The readings load_extra_readings adds for training only: every careful reading of a small model's replies
# in labels/ that is not already a source of its own.
EXTRA_READINGS = {"smollm2_extra": tuple(GEMMA_FILE.with_name(f"smollm2_{name}.jsonl") for name in (
                      "quick_test_replies", "quick_test_controls", "standard_variants_test_sample",
                      "standard_variant_choice_test_sample")),
                  "gemma_extra": tuple(GEMMA_FILE.with_name(f"gemma3_270m_{name}.jsonl") for name in (
                      "quick_test_controls", "standard_test_sample"))}
CONDITIONS = ("prompting", "steering", "circuit")
# Careful readings no shipped judge is fitted on, with the run's own fluency verdicts: the pipeline's test-split
# replies of the default model (quick preset) and a sample of the second model's (standard preset, with the
# unmodified neutral reply read against each target as `baseline`). {name: (file, conditions)}
UNSEEN_READINGS = {"smollm2_quick_test": (SMOLLM2_QUICK_FILE, CONDITIONS),
                   "gemma_standard_test": (GEMMA_FILE.with_name("gemma3_270m_standard_test_sample.jsonl"),
                                           (*CONDITIONS, "baseline"))}
NONE = "none"


@dataclasses.dataclass(frozen=True)
class LabelledText:
    """One text with its reference verdict.

    source: "prompted" / "unprompted" (Llama, gpt-4o-mini), "neutral" (an SEV sentence, no target),
    "rated" (the default model's reply, careful reading) or "gemma" (Gemma-3-270M's, careful reading).
    `label` is the class the classifier learns: the target when it matches, else the emotion the text
    mainly expresses, else "none".
    """

    text: str
    target: str  # "" for a neutral sentence
    match: int
    label: str
    scenario: str  # skeleton_id: the cross-validation group
    source: str
    condition: str = ""  # rated replies: prompting, steering or circuit
    fluent: int = -1  # rated replies: 0/1; -1 where nobody rated fluency
    prompt: Messages | None = None  # rated replies: the prompt they were written to
    key: str = ""  # Llama's steered replies: skeleton_id/valence/emotion of the official reply


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def labels_file_hash(path: Path) -> dict[str, str]:
    """{repository path: sha256} of a file in this folder's labels/, as the figures record their inputs."""
    return {f"experiments/judge_training/labels/{path.name}": sha256(path)}


def load_official(data_dir: Path, neutral_sentences: bool) -> tuple[list[LabelledText], dict[str, str], int]:
    """(Llama texts and, optionally, SEV sentences; sha256 of each file; judge-error rows dropped)."""
    base = data_dir / "llama32_3b"
    files = {"accepted": base / "prompting_sev" / "accepted.jsonl",
             "rejected": base / "prompting_sev" / "rejected.jsonl",
             "unprompted": base / "steering_half" / "labeled_results.jsonl"}
    if neutral_sentences:
        files["neutral"] = data_dir / "sev.jsonl"
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"--data_dir={data_dir}: missing {name} file {path}")
    rows, dropped = [], 0
    for kind in ("accepted", "rejected"):
        for i, record in enumerate(_jsonl(files[kind])):
            judge = record["judge"]
            if str(judge.get("reason", "")).startswith(JUDGE_ERROR_PREFIXES):
                dropped += 1
                continue
            if judge["match"] != (kind == "accepted"):
                raise ValueError(f"{files[kind]} line {i + 1}: judge.match={judge['match']} in the {kind} file")
            match = int(judge["match"])
            rows.append(LabelledText(record["gen_text"], record["emotion"], match,
                                     record["emotion"] if match else NONE, record["skeleton_id"], "prompted"))
    for record in _jsonl(files["unprompted"]):
        for valence, verdicts in record["valence_labels"].items():
            for emotion, verdict in verdicts.items():
                match = int(verdict["match"])
                rows.append(LabelledText(record["event_valences"][valence][emotion], emotion, match,
                                         emotion if match else NONE, record["skeleton_id"], "unprompted",
                                         key=steered_key(record["skeleton_id"], valence, emotion)))
    if neutral_sentences:
        rows += [LabelledText(text, "", 0, NONE, scenario, "neutral")
                 for text, scenario in sev_sentences(files["neutral"])]
    hashes = {str(path.relative_to(data_dir)): sha256(path) for path in files.values()}
    return rows, hashes, dropped


def steered_key(skeleton_id: str, valence: str, emotion: str) -> str:
    return f"{skeleton_id}/{valence}/{emotion}"


def text_digest(text: str) -> str:
    """The first 16 hex digits of a text's SHA-256: how a labels file names a text it does not hold."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def sev_sentences(path: Path) -> list[tuple[str, str]]:
    """(sentence, skeleton_id) for every scenario and event of an SEV file."""
    out = []
    for record in _jsonl(path):
        out.append((record["scenario"], record["skeleton_id"]))
        out += [(record["event"][v], record["skeleton_id"]) for v in ("positive", "neutral", "negative")]
    return out


def rated_prompt(condition: str, emotion: str, scenario: str, event: str) -> Messages:
    """The prompt a rated reply was written to: the emotion prompt (prompting) or the neutral prompt."""
    system = emotion_system(emotion) if condition == "prompting" else NEUTRAL_SYSTEM
    return chat(system, user_message(scenario, event))


def load_rated(labels_dir: Path) -> tuple[list[LabelledText], dict[str, str]]:
    """The default model's rated replies, with the prompts they answered; (rows, {file: sha256})."""
    path = labels_dir / RATED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--labels_dir={labels_dir}: missing {path}")
    return _careful_reading(_jsonl(path), path, "rated"), {f"labels/{RATED_FILE}": sha256(path)}


def load_gemma(path: Path = GEMMA_FILE) -> tuple[list[LabelledText], np.ndarray, dict[str, str]]:
    """Gemma-3-270M's rated replies; (rows, the run's own fluency verdict of each, {file: sha256})."""
    return load_pipeline_rated(path, "gemma")


def load_pipeline_rated(path: Path, source: str, conditions: Sequence[str] = CONDITIONS
                        ) -> tuple[list[LabelledText], np.ndarray, dict[str, str]]:
    """A pipeline run's replies rated by careful reading (labels/README.md), each of one of `conditions`; (rows,
    the run's own fluency verdict of each, {file: sha256})."""
    records = _jsonl(path)
    rows = _careful_reading(records, path, source, conditions)
    run_fluent = np.array([int(record["run_verdict"]["fluent"]) for record in records])
    return rows, run_fluent, labels_file_hash(path)


def _careful_reading(records: list[dict[str, Any]], path: Path, source: str,
                     conditions: Sequence[str] = CONDITIONS) -> list[LabelledText]:
    """Replies rated by careful reading (rubric.md, the records of `path`), with the prompts they answered."""
    rows = []
    for i, record in enumerate(records):
        where = f"{path} line {i + 1}"
        if record["condition"] not in conditions:
            raise ValueError(f"{where}: condition {record['condition']!r} unknown")
        match, learnt, fluent = _reading(record, where)
        rows.append(LabelledText(record["text"], record["emotion"], match, learnt, record["skeleton_id"], source,
                                 record["condition"], fluent,
                                 rated_prompt(record["condition"], record["emotion"], record["scenario"],
                                              record["event"])))
    return rows


def _reading(record: dict[str, Any], where: str) -> tuple[int, str, int]:
    """(match, the class a judge learns, fluent) of one careful reading: the target when it matches, else the
    emotion the text mainly expresses, else none."""
    label = record.get("label")
    if record.get("emotion") not in EMOTIONS:
        raise ValueError(f"{where}: emotion {record.get('emotion')!r} unknown")
    if not isinstance(label, dict) or not {"match", "fluent", "dominant"} <= set(label):
        raise ValueError(f"{where}: bad label {label}: expected match, fluent and dominant")
    if label["match"] not in (0, 1) or label["fluent"] not in (0, 1) or label["dominant"] not in (*EMOTIONS, NONE):
        raise ValueError(f"{where}: bad label {label}")
    match, dominant = int(label["match"]), label["dominant"]
    learnt = record["emotion"] if match else (dominant if dominant != record["emotion"] else NONE)
    return match, learnt, int(label["fluent"])


def load_extra_readings(known: set[tuple[str, str]]) -> tuple[list[LabelledText], dict[str, str]]:
    """Every other careful reading of the two small models' replies in labels/ (test-split runs, controls and
    samples: EXTRA_READINGS), as sources `smollm2_extra` and `gemma_extra`, less the (text, target) pairs of
    `known` (the texts the caller tests) and of an earlier file. (rows, {file: sha256})."""
    rows, hashes, seen = [], {}, set(known)
    for source, paths in EXTRA_READINGS.items():
        for path in paths:
            for i, record in enumerate(_jsonl(path)):
                match, learnt, fluent = _reading(record, f"{path} line {i + 1}")
                if (record["text"], record["emotion"]) in seen:
                    continue
                seen.add((record["text"], record["emotion"]))
                scenario = record.get("skeleton_id") or record["key"].split("__")[0]
                rows.append(LabelledText(record["text"], record["emotion"], match, learnt, scenario, source,
                                         record["condition"], fluent))
            hashes.update(labels_file_hash(path))
    return rows, hashes


@dataclasses.dataclass(frozen=True)
class ReadSample:
    """Official Llama steered replies read carefully: a sample stratified by (target, gpt-4o-mini verdict).

    `weight` is each row's stratum population (counted in the official file) over its sample size, so weighted
    figures estimate the whole 1,440 replies; `match` is the first reading, `second_match` the independent one.
    """

    scenarios: list[str]
    texts: list[str]
    targets: list[str]
    gpt_match: np.ndarray
    match: np.ndarray
    second_match: np.ndarray
    weight: np.ndarray


READING_FIELDS = ("skeleton_id", "valence", "emotion", "text_sha256", "gpt_match", "stratum_population", "label",
                  "second_label")


def official_steered(data_dir: Path) -> tuple[Path, dict[str, tuple[str, int]]]:
    """(the official steered-replies file, {steered_key: (reply text, gpt-4o-mini's match)})."""
    official = data_dir / "llama32_3b" / "steering_half" / "labeled_results.jsonl"
    return official, {steered_key(record["skeleton_id"], valence, emotion):
                      (record["event_valences"][valence][emotion], int(verdict["match"]))
                      for record in _jsonl(official) for valence, by_emotion in record["valence_labels"].items()
                      for emotion, verdict in by_emotion.items()}


def checked_steered_reading(record: dict[str, Any], where: str, official: Path,
                            replies: dict[str, tuple[str, int]]) -> tuple[str, str, int]:
    """(steered_key, text, gpt-4o-mini's match) of the official reply a careful-reading row reads, refusing a row
    whose key, text hash or gpt_match is not the official file's."""
    key = steered_key(record["skeleton_id"], record["valence"], record["emotion"])
    if key not in replies:
        raise ValueError(f"{where}: no official steered reply {key} in {official}")
    text, verdict = replies[key]
    if record["text_sha256"] != text_digest(text):
        raise ValueError(f"{where}: text_sha256 {record['text_sha256']} is not that of the official reply "
                         f"{key} in {official}: the reading is of another text")
    if int(record["gpt_match"]) != verdict:
        raise ValueError(f"{where}: gpt_match {record['gpt_match']}, the official verdict is {verdict}")
    return key, text, verdict


def load_llama_reading(data_dir: Path, path: Path = LLAMA_READING_FILE) -> tuple[ReadSample, dict[str, str]]:
    """The careful readings of `path`, joined by key with the official steered replies they read."""
    official, replies = official_steered(data_dir)
    population = Counter((key.rsplit("/", 1)[1], verdict) for key, (_, verdict) in replies.items())
    rows, seen = [], set()
    for i, record in enumerate(_jsonl(path)):
        where = f"{path} line {i + 1}"
        missing = [f for f in READING_FIELDS if f not in record]
        if missing:
            raise ValueError(f"{where}: field {missing[0]!r} is missing")
        key, text, verdict = checked_steered_reading(record, where, official, replies)
        if key in seen:
            raise ValueError(f"{where}: reply {key} is read twice")
        seen.add(key)
        if record["stratum_population"] != population[(record["emotion"], verdict)]:
            raise ValueError(f"{where}: stratum_population {record['stratum_population']}, the official file holds "
                             f"{population[(record['emotion'], verdict)]} such replies")
        if record["label"].get("match") not in (0, 1) or record["second_label"].get("match") not in (0, 1):
            raise ValueError(f"{where}: bad label {record['label']} / {record['second_label']}")
        rows.append((record, text, verdict))
    sampled = Counter((record["emotion"], verdict) for record, _, verdict in rows)
    sample = ReadSample([r["skeleton_id"] for r, _, _ in rows], [text for _, text, _ in rows],
                        [r["emotion"] for r, _, _ in rows], np.array([v for _, _, v in rows]),
                        np.array([int(r["label"]["match"]) for r, _, _ in rows]),
                        np.array([int(r["second_label"]["match"]) for r, _, _ in rows]),
                        np.array([population[(r["emotion"], v)] / sampled[(r["emotion"], v)] for r, _, v in rows]))
    return sample, labels_file_hash(path)


def load_llama_careful(data_dir: Path, paths: Sequence[Path] = (LLAMA_READING_FILE, LLAMA_READ_FILE)
                       ) -> tuple[dict[str, tuple[int, str, int]], dict[str, str]]:
    """Careful reading (each file's first reading, `label`) of every official steered reply, by steered_key:
    {key: (match, the class a judge learns, fluent)}, and {file: sha256}. Refuses a row whose key is not an
    official reply, whose gpt_match is not the official verdict or that another row already read, and files
    that leave some official reply unread."""
    official, replies = official_steered(data_dir)
    out, hashes = {}, {}
    for path in paths:
        for i, record in enumerate(_jsonl(path)):
            where = f"{path} line {i + 1}"
            missing = [f for f in ("skeleton_id", "valence", "emotion", "text_sha256", "gpt_match", "label")
                       if f not in record]
            if missing:
                raise ValueError(f"{where}: field {missing[0]!r} is missing")
            key, _, _ = checked_steered_reading(record, where, official, replies)
            if key in out:
                raise ValueError(f"{where}: reply {key} is read twice")
            out[key] = _reading(record, where)
        hashes.update(labels_file_hash(path))
    unread = sorted(set(replies) - set(out))
    if unread:
        raise ValueError(f"{len(unread)} official steered replies are read in none of "
                         f"{[str(p) for p in paths]}, e.g. {unread[0]}")
    return out, hashes


def double_readings(path: Path = LLAMA_READ_FILE) -> np.ndarray:
    """[n, 2] first and second match of the rows of `path` that were read twice (`second_label`)."""
    out = []
    for i, record in enumerate(_jsonl(path)):
        if "second_label" in record:
            second_label = record["second_label"]
            first = _reading(record, f"{path} line {i + 1}")[0]
            second = second_label.get("match") if isinstance(second_label, dict) else None
            if second not in (0, 1):
                raise ValueError(f"{path} line {i + 1}: bad second_label {record['second_label']}")
            out.append([first, second])
    return np.array(out, np.int64).reshape(-1, 2)
