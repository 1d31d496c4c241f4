"""`rate` on big, long and failing inputs: a row over the model's maximum position is refused in
seconds naming its line, rows are bucketed by length, progress is reported per chunk, an interrupted
rate resumes to the uninterrupted output, and the judge-failure rule names the failed rows, exits 2
and judges only those rows again on the next run."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, subprocess_env
from emojax.judge.fluency import FluencyRule
from emojax.judge.offline import OfflineJudge
from emojax.judge.rate_chunks import length_order, rate_to_file, token_lengths, work_dir
from emojax.judge.rating import rate, read_numbered_rows
from emojax.runs import InputError
from emojax.weights.cache import CACHE_DIR_ENV
from hf_fixtures import make_tiny_checkpoint
from judge_stub_server import StubJudgeServer
from stage_fixtures import tiny_loaded_model

EMOTIONS = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")


def _rows(n: int) -> list[dict]:
    """Rows of varied lengths, so that chunks have different widths."""
    return [{"id": i, "text": "so " * (1 + (7 * i) % 13) + "much", "emotion": EMOTIONS[i % 6],
             "scenario": f"I walked to place {i}", "event": "It was " + "very " * (i % 5) + "late."}
            for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), family="llama")


def _rate(tmp_path: Path, cache: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = subprocess_env(**{CACHE_DIR_ENV: str(tmp_path / cache), "JAX_PLATFORMS": "cpu"}, **env)
    return subprocess.run([sys.executable, "-m", "experiments.rate", *args], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


def _popen_rate(tmp_path: Path, cache: str, *args: str, **env: str) -> subprocess.Popen:
    environment = subprocess_env(**{CACHE_DIR_ENV: str(tmp_path / cache), "JAX_PLATFORMS": "cpu"}, **env)
    return subprocess.Popen([sys.executable, "-m", "experiments.rate", *args], cwd=REPO_ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_rows_are_bucketed_by_length_and_rated_as_one_batch_would(tmp_path):
    rows = read_numbered_rows(_write(tmp_path / "in.jsonl", _rows(9)))
    model = tiny_loaded_model()
    lengths = token_lengths(model, rows)
    order = length_order(lengths)
    assert list(lengths[order]) == sorted(lengths) and len(set(lengths)) > 3
    one = rate(rows.rows, rows.prompts, model=model, judge=OfflineJudge(), rule=FluencyRule.load(), batch_size=9)
    chunked = rate(rows.rows, rows.prompts, model=model, judge=OfflineJudge(), rule=FluencyRule.load(), batch_size=2)
    assert [r["id"] for r in chunked] == list(range(9))
    for a, b in zip(one, chunked):
        assert {k: v for k, v in a.items() if k != "perplexity"} == {k: v for k, v in b.items() if k != "perplexity"}
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-5)


def test_a_row_over_the_maximum_position_is_refused_naming_its_line(tmp_path):
    rows = _rows(3)
    rows[1]["text"] = "word " * 400  # about 2,000 tokens of the tiny vocabulary; the model holds 1,024
    parsed = read_numbered_rows(_write(tmp_path / "in.jsonl", rows))
    with pytest.raises(InputError, match=r"in.jsonl line 2: its prompt and text are [\d,]+ tokens, more than the "
                                         r"model's maximum position 1,024; shorten it, or rate it with a --model of a longer context$"):
        token_lengths(tiny_loaded_model(), parsed)


def test_progress_is_reported_as_chunks_finish(tmp_path, caplog):
    rows = read_numbered_rows(_write(tmp_path / "in.jsonl", _rows(6)))
    with caplog.at_level("INFO", logger="absl"):
        rate_to_file(rows, tmp_path / "out.jsonl", model=tiny_loaded_model(), judge=OfflineJudge(),
                     rule=FluencyRule.load(), batch_size=2, input_sha256="test", log_every_s=0.0)
    assert "rate in.jsonl: 2/6 item" in caplog.text and "rate in.jsonl: 4/6 item" in caplog.text
    assert not work_dir(tmp_path / "out.jsonl").exists()


def test_rate_refuses_a_200000_character_row_in_seconds(checkpoint, tmp_path):
    rows = _rows(2) + [{"text": "a" * 200_000, "emotion": "anger", "scenario": "I ran", "event": "It rained."}]
    started = time.monotonic()
    result = _rate(tmp_path, "cache", f"--input={_write(tmp_path / 'in.jsonl', rows)}",
                   f"--output={tmp_path / 'out.jsonl'}", f"--model={checkpoint}")
    assert time.monotonic() - started < 60
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.fullmatch(rf"error: {re.escape(str(tmp_path / 'in.jsonl'))} line 3: its prompt and text are 200,0\d\d "
                        r"characters, far more than the model's 256 positions hold; shorten it, or rate it with a "
                        r"--model of a longer context", result.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("output", ["same", "directory"])
def test_rate_refuses_an_output_that_would_replace_the_input(tmp_path, output):
    source = _write(tmp_path / "in.jsonl", _rows(2))
    target = source if output == "same" else tmp_path
    result = _rate(tmp_path, "cache", f"--input={source}", f"--output={target}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --output={target} is ")
    assert source.read_text() == "".join(json.dumps(r) + "\n" for r in _rows(2))


def test_rate_on_an_empty_input_exits_2(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n")
    result = _rate(tmp_path, "cache", f"--input={source}", f"--output={tmp_path / 'out.jsonl'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {source}: no rows to rate"


def _wait_for_chunks(work: Path, process: subprocess.Popen, count: int, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.poll() is None:
        indexes = list(work.glob("*/index.json"))
        if indexes and len(json.loads(indexes[0].read_text())["chunks"]) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} chunks in {work}: {process.poll()}")


@pytest.mark.slow  # three rate processes
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_rate_resumes_to_the_uninterrupted_output(checkpoint, tmp_path, signum, status):
    source = _write(tmp_path / "in.jsonl", _rows(12))
    with StubJudgeServer(plan=["slow:0.3"]) as server:
        judge = dict(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.url)
        args = [f"--input={source}", f"--model={checkpoint}", "--judge=http:gpt-4o-mini", "--batch_size=2"]
        out = tmp_path / "out.jsonl"
        process = _popen_rate(tmp_path, "cache", *args, f"--output={out}", **judge)
        _wait_for_chunks(work_dir(out), process, 1)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == status, stderr[-2000:]
        assert stderr.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
        assert not out.exists()
        judged_before = server.requests
        resumed = _rate(tmp_path, "cache", *args, f"--output={out}", **judge)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resuming, " in resumed.stderr and server.requests - judged_before < 1 + 12
        reference = _rate(tmp_path, "fresh-cache", *args, f"--output={tmp_path / 'reference.jsonl'}", **judge)
        assert reference.returncode == 0, reference.stderr[-2000:]
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()
    assert not work_dir(out).exists()


@pytest.mark.slow  # two rate processes
def test_rate_fails_on_judge_failures_and_judges_only_those_again(checkpoint, tmp_path):
    source = _write(tmp_path / "in.jsonl", _rows(3))
    out = tmp_path / "out.jsonl"
    args = [f"--input={source}", f"--output={out}", f"--model={checkpoint}", "--judge=http:gpt-4o-mini",
            "--judge_deadline_s=1.5"]
    with StubJudgeServer(plan=["ok", "garbage"]) as server:
        failed = _rate(tmp_path, "cache", *args, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.url)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: {source}: the judge failed on 3 of 3 rows (100%, more than the 5% allowed; lines 1, 2, 3; first "
        "error: API failure: the server's reply is not JSON; the next try (in 2 s) would pass the 1.5 s deadline); "
        f"nothing was written to {out}: fix the judge and run the same command again, which judges only those "
        "rows again")
    assert not out.exists()
    with StubJudgeServer(plan=["ok"]) as server:
        again = _rate(tmp_path, "cache", *args, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.url)
        requests = server.requests
    assert again.returncode == 0, again.stderr[-2000:]
    assert requests == 1 + 3  # the start-up check, then the three failed rows, judged again
    rated = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["match"] for r in rated] == [1, 1, 1] and [r["id"] for r in rated] == [0, 1, 2]
