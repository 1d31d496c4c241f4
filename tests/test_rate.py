"""The rating command: good rows get match, fluent, fluent_match, perplexity and reason; a bad row fails
with its line number and field, and nothing is written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env
from emojax.judge.fluency import FluencyRule
from emojax.judge.offline import OfflineJudge
from emojax.judge.rating import OUTPUT_FIELDS, rate, read_rows
from emojax.method.prompts import NEUTRAL_SYSTEM, chat, user_message
from emojax.runs import InputError
from emojax.weights.cache import CACHE_DIR_ENV
from hf_fixtures import make_tiny_checkpoint
from stage_fixtures import tiny_loaded_model

GOOD = [
    {"id": 1, "text": "Ugh, that is revolting.", "emotion": "disgust", "scenario": "I cleaned the fridge",
     "event": "A forgotten container had gone mouldy."},
    {"id": 2, "text": "What a lovely surprise!", "emotion": "surprise",
     "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A friend visited."}]},
    {"id": 3, "text": "", "emotion": "anger", "scenario": "I waited for the bus", "event": "It came on time."},
]


def _write(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def test_read_rows_renders_the_neutral_prompt_or_takes_the_messages(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    _write(path, [GOOD[0], "", GOOD[1]])
    rows, prompts = read_rows(path)
    assert [r["id"] for r in rows] == [1, 2]
    assert prompts[0] == chat(NEUTRAL_SYSTEM, user_message(GOOD[0]["scenario"], GOOD[0]["event"]))
    assert prompts[1] == GOOD[1]["messages"]


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    ({"emotion": "anger", "scenario": "s", "event": "e"}, "line 2: field 'text' is missing"),
    ({"text": 5, "emotion": "anger", "scenario": "s", "event": "e"}, "line 2: field 'text' must be a string"),
    ({"text": "t", "emotion": "joy", "scenario": "s", "event": "e"}, "line 2: field 'emotion' is 'joy'"),
    ({"text": "t", "emotion": "anger"}, "line 2: field 'scenario' is missing"),
    ({"text": "t", "emotion": "anger", "scenario": "s"}, "line 2: field 'event' is missing"),
    ({"text": "t", "emotion": "anger", "messages": []}, "line 2: field 'messages' must be a non-empty list"),
    ({"text": "t", "emotion": "anger", "messages": [{"role": "user", "content": "hi"}]},
     "line 2: field 'messages' must start with a system message"),
    ({"text": "t", "emotion": "anger", "messages": [{"role": "system"}]}, "line 2: field 'messages' entry 0"),
    ({**GOOD[1], "scenario": "s"}, "line 2: field 'messages' and scenario/event are both given"),
])
def test_a_bad_row_names_its_line_and_field(tmp_path, bad, message) -> None:
    path = tmp_path / "in.jsonl"
    _write(path, [GOOD[0], bad])
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_rows(path)


def test_rate_adds_the_verdicts(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    _write(path, GOOD)
    rows, prompts = read_rows(path)
    out = rate(rows, prompts, model=tiny_loaded_model(), judge=OfflineJudge(), rule=FluencyRule.load(), batch_size=2)
    assert [{k: r[k] for k in GOOD[i]} for i, r in enumerate(out)] == GOOD      # the input rows, unchanged
    for r in out:
        assert set(OUTPUT_FIELDS) <= set(r) and r["match"] in (0, 1) and r["fluent"] in (0, 1)
        assert r["fluent_match"] == (r["match"] and r["fluent"]) and isinstance(r["reason"], str)
    assert isinstance(out[0]["perplexity"], float) and out[0]["perplexity"] > 1
    assert out[2]["perplexity"] is None and out[2]["fluent"] == 0 and out[2]["match"] == 0
    assert out[2]["reason"] == "judge error: empty text"


def _run(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.rate", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_rate_command_on_good_and_malformed_input(tmp_path) -> None:
    env = subprocess_env(**{CACHE_DIR_ENV: str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"})
    model = make_tiny_checkpoint(tmp_path, family="llama")
    good, bad, out = tmp_path / "good.jsonl", tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    _write(good, GOOD)
    done = _run([f"--input={good}", f"--output={out}", f"--model={model}"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    rated = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rated] == [1, 2, 3] and all(set(OUTPUT_FIELDS) <= set(r) for r in rated)
    assert "3 replies:" in done.stdout

    _write(bad, [GOOD[0], GOOD[1], {"text": "t", "emotion": "rage", "scenario": "s", "event": "e"}])
    before = out.read_bytes()
    failed = _run([f"--input={bad}", f"--output={out}", f"--model={model}"], env)
    assert failed.returncode != 0
    assert f"{bad} line 3: field 'emotion' is 'rage'" in failed.stderr
    assert out.read_bytes() == before                 # nothing written, not even half
