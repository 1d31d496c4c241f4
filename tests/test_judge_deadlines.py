"""The HTTP judge under a misbehaving endpoint: a hung server fails a verdict within the deadline, a cut
body, a reset connection or a body that is not JSON is retried, and Retry-After is honoured up to the
deadline; the same limits hold for the launchers' start-up check."""
from __future__ import annotations

import email.utils
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, default_gguf, subprocess_env
from emojax.judge.http import DEFAULT_DEADLINE_S, DEFAULT_TIMEOUT_S, HttpJudge, retry_after_s
from judge_stub_server import StubJudgeServer

KEY_ENV = "EMOJAX_TEST_DEADLINE_KEY"


def _judge(server: StubJudgeServer, tmp_path, monkeypatch, **options) -> HttpJudge:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    settings = dict(base_url=server.url, api_key_env=KEY_ENV, backoff_scale=0.05, requests_per_second=100.0,
                    workers=1, use_cache=False, timeout_s=5.0, deadline_s=10.0)
    settings.update(options)
    return HttpJudge("judge-model", **settings)


def test_the_defaults_fail_a_hung_endpoint_within_two_minutes():
    assert DEFAULT_TIMEOUT_S < DEFAULT_DEADLINE_S < 120


def test_a_hung_endpoint_fails_the_verdict_within_the_deadline(tmp_path, monkeypatch):
    with StubJudgeServer(plan=["hang"]) as server:
        judge = _judge(server, tmp_path, monkeypatch, timeout_s=0.5, deadline_s=1.5, backoff_scale=0.2)
        started = time.monotonic()
        result = judge(["I am furious!"], ["anger"])
        elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 0.5  # the deadline, plus scheduling slack
    assert result.match.tolist() == [0]
    assert result.errors[0].startswith("API failure: no reply within")
    assert 1 <= server.requests <= 3


@pytest.mark.parametrize("fault", ["cut", "reset", "garbage"])
def test_a_cut_reset_or_garbled_reply_is_retried(tmp_path, monkeypatch, fault):
    with StubJudgeServer(plan=[fault, "ok"]) as server:
        result = _judge(server, tmp_path, monkeypatch)(["I am furious!"], ["anger"])
    assert result.errors == [None] and result.match.tolist() == [1]
    assert server.requests == 2


def test_retry_after_is_honoured(tmp_path, monkeypatch):
    with StubJudgeServer(plan=["429:1", "ok"]) as server:
        result = _judge(server, tmp_path, monkeypatch)(["I am furious!"], ["anger"])
    assert result.match.tolist() == [1] and server.requests == 2
    assert server.times[1] - server.times[0] >= 1.0


def test_a_retry_after_past_the_deadline_fails_at_once(tmp_path, monkeypatch):
    with StubJudgeServer(plan=["429:100"]) as server:
        started = time.monotonic()
        result = _judge(server, tmp_path, monkeypatch, deadline_s=5.0)(["I am furious!"], ["anger"])
    assert time.monotonic() - started < 2.0
    assert server.requests == 1
    assert result.errors[0] == "API failure: HTTP 429; the next try (in 100 s) would pass the 5 s deadline"


def test_retry_after_values():
    assert retry_after_s("7") == 7.0
    now = time.time()
    assert retry_after_s(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_the_start_up_check_is_bounded_by_the_deadline(tmp_path, monkeypatch):
    with StubJudgeServer(plan=["hang"]) as server:
        judge = _judge(server, tmp_path, monkeypatch, timeout_s=0.5, deadline_s=1.0)
        started = time.monotonic()
        with pytest.raises(ValueError, match=r"a 1-token test request to .* failed \(no reply within"):
            judge.check()
    assert time.monotonic() - started < 1.0 + 0.5


@pytest.mark.skipif(default_gguf() is None, reason="the default model is not installed")
def test_a_launcher_stops_at_start_up_on_a_hung_endpoint(tmp_path):
    with StubJudgeServer(plan=["hang"]) as server:
        env = subprocess_env(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.url,
                             EMOJAX_CACHE_DIR=str(tmp_path / "cache"))
        result = subprocess.run([sys.executable, "-m", "experiments.elicit", f"--out={tmp_path / 'run'}",
                                 "--judge=http:gpt-4o-mini", "--judge_timeout_s=1", "--judge_deadline_s=3"],
                                capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
        spread = server.times[-1] - server.times[0]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error, = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error == (f"error: --judge=http:gpt-4o-mini: a 1-token test request to {server.url}/chat/completions "
                     "failed (no reply within 1 s; the next try (in 2 s) would pass the 3 s deadline); check the "
                     "key in $OPENAI_API_KEY, the model name 'gpt-4o-mini' and the base URL")
    assert server.requests == 2 and spread < 3
    assert not (tmp_path / "run").exists()
