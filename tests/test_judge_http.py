"""The HTTP judge against a canned OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from emojax.judge.http import HttpJudge, RateLimiter

SECRET = "sk-test-9f8e7d6c5b4a-never-written"
VERSION = "judge-model-2024-07-18"


class _Server:
    """Replies by a marker word in the judged text; counts requests per marker."""

    def __init__(self):
        self.requests: dict[str, int] = {}
        self.auth_headers: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][1]["content"]
                marker = next((m for m in ("FENCED", "PLAIN", "NOJSON", "FLAKY", "DOWN", "NOMATCH")
                               if m in text), "OTHER")
                with server.lock:
                    count = server.requests[marker] = server.requests.get(marker, 0) + 1
                    server.auth_headers.append(self.headers.get("Authorization"))
                if marker == "DOWN" or (marker == "FLAKY" and count == 1):
                    self.send_response(500)
                    self.end_headers()
                    return
                reply = {
                    "FENCED": '```json\n{"match": 1, "reason": "fenced"}\n```',
                    "PLAIN": '{"match": 1, "reason": "plain"}',
                    "NOJSON": "The tone clearly matches.",
                    "FLAKY": '{"match": 1, "reason": "second try"}',
                    "NOMATCH": '{"match": 0, "reason": "neutral tone"}',
                }.get(marker, '{"reason": "no match key"}')
                data = json.dumps({"model": VERSION,
                                   "choices": [{"message": {"role": "assistant", "content": reply}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    with _Server() as s:
        yield s


def _judge(server, tmp_path, monkeypatch, **kwargs) -> HttpJudge:
    monkeypatch.setenv("EMOJAX_TEST_JUDGE_KEY", SECRET)
    options = dict(base_url=server.url, api_key_env="EMOJAX_TEST_JUDGE_KEY", backoff_scale=0.01,
                   requests_per_second=200.0, workers=3, cache_dir=tmp_path / "cache", timeout_s=10.0)
    options.update(kwargs)
    return HttpJudge("judge-model", **options)


TEXTS = ["FENCED text", "PLAIN text", "NOJSON text", "FLAKY text", "DOWN text", "NOMATCH text",
         "OTHER text", "   "]
TARGETS = ["anger", "sadness", "happiness", "fear", "surprise", "disgust", "anger", "fear"]


def test_verdicts_retries_and_errors(server, tmp_path, monkeypatch):
    judge = _judge(server, tmp_path, monkeypatch)
    result = judge(TEXTS, TARGETS)
    np.testing.assert_array_equal(result.match, [1, 1, 0, 1, 0, 0, 0, 0])
    assert result.reasons[0] == "fenced" and result.reasons[3] == "second try"
    errors = dict(zip([t.split()[0] if t.strip() else "EMPTY" for t in TEXTS], result.errors))
    assert errors["FENCED"] is None and errors["PLAIN"] is None and errors["NOMATCH"] is None
    assert errors["FLAKY"] is None  # a 500 then a success is retried, not an error
    assert "unparsable" in errors["NOJSON"]
    assert "match" in errors["OTHER"]
    assert errors["DOWN"].startswith("API failure") and "500" in errors["DOWN"]
    assert errors["EMPTY"] == "empty text"
    assert result.n_errors == 4
    assert server.requests["FLAKY"] == 2
    assert server.requests["DOWN"] == 1 + judge.retries
    assert server.auth_headers and all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    assert judge.describe()["model_versions"] == [VERSION]


def test_cache_serves_repeats_and_never_holds_the_key(server, tmp_path, monkeypatch):
    first = _judge(server, tmp_path, monkeypatch)(TEXTS, TARGETS)
    served = dict(server.requests)
    again = _judge(server, tmp_path, monkeypatch)  # a new judge reads the cache file back
    second = again(TEXTS, TARGETS)
    np.testing.assert_array_equal(first.match, second.match)
    assert second.errors == first.errors
    # Only the transport failure is asked again; every reply received is served from the cache.
    assert {k: v - served.get(k, 0) for k, v in server.requests.items() if v != served.get(k, 0)} \
        == {"DOWN": 1 + again.retries}
    assert again.describe()["model_versions"] == [VERSION]
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files, "the cache wrote nothing"
    for path in files:
        assert SECRET not in path.read_text(errors="replace")
    assert SECRET not in json.dumps(again.describe())


def test_a_truncated_cache_line_is_skipped(server, tmp_path, monkeypatch):
    judge = _judge(server, tmp_path, monkeypatch)
    judge(["PLAIN text"], ["anger"])
    with open(judge.cache.path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "cut sh')
    reread = _judge(server, tmp_path, monkeypatch)
    assert len(reread.cache) == 1 and reread.cache.skipped_lines == 1


def test_rate_limiter_spaces_requests():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == [0.25, 0.25]


def test_bad_targets_are_rejected(server, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="target 0"):
        _judge(server, tmp_path, monkeypatch)(["PLAIN text"], ["joy"])


def test_check_makes_one_authenticated_request(server, tmp_path, monkeypatch):
    judge = _judge(server, tmp_path, monkeypatch)
    judge.check()
    assert server.requests == {"OTHER": 1} and server.auth_headers == [f"Bearer {SECRET}"]


def test_check_refuses_a_missing_key_and_a_malformed_url_without_a_request(server, tmp_path, monkeypatch):
    judge = _judge(server, tmp_path, monkeypatch)
    monkeypatch.delenv("EMOJAX_TEST_JUDGE_KEY")
    with pytest.raises(ValueError, match=r"\$EMOJAX_TEST_JUDGE_KEY is not set; the judge http:judge-model reads"):
        judge.check()
    monkeypatch.setenv("EMOJAX_TEST_JUDGE_KEY", SECRET)
    for url in ("localhost:8000/v1", "ftp://example.org/v1", "https://"):
        with pytest.raises(ValueError, match="is not an http\\(s\\) URL"):
            _judge(server, tmp_path, monkeypatch, base_url=url).check()
    assert server.requests == {}
