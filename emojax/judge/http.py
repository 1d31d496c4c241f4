"""Judge through any OpenAI-compatible chat-completions endpoint (method.md §4.3, [D16]).

This reproduces the paper's judge (`gpt-4o-mini`, temperature 0.1, 4 retries with 1.8^i s backoff,
fence stripping, failures = match 0 and flagged). Only the standard library is used.

`check()` is what a launcher runs before any generation: the key variable is set, the base URL is
an http(s) URL, and one 1-token request with the key is answered.

Time limits: each request waits at most `timeout_s` for the server (per connect or read), and one
verdict (every attempt, backoff and `Retry-After` wait together) at most `deadline_s`, so a hung
endpoint fails a verdict, and the start-up check, within the deadline (defaults: 30 s and 110 s).
A `Retry-After` header (seconds or an HTTP date) is honoured when it ends before the deadline. A
reply cut mid-body, a reset connection and a body that is not the expected JSON are transient
failures, retried like a 5xx.

The API key is read from an environment variable at call time and goes into the Authorization
header only: it is never stored on the object, logged, put in an error message, a cache or a
description. Replies are cached on disk (emojax.judge.cache) by a hash of (model, prompt); transport
failures are not cached, so a later run retries them. The model version the server reports (the
`model` field of each reply) is recorded.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from emojax.judge.base import JudgeResult, check_inputs
from emojax.judge.cache import VerdictCache, cache_key
from emojax.method.prompts import judge_messages, parse_judge_reply
from emojax.weights.cache import resolve_cache_dir

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# Statuses worth another try: rate limiting and server-side failures.
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 110.0  # with the default timeout, a hung endpoint fails a verdict within 2 minutes


class RateLimiter:
    """At most `per_second` starts per second across threads (evenly spaced)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if per_second <= 0:
            raise ValueError(f"requests per second must be > 0, got {per_second}")
        self._interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


class ApiError(RuntimeError):
    """A request that failed after its retries (the message never holds the key)."""


class HttpJudge:
    """`HttpJudge("gpt-4o-mini")(texts, targets) -> JudgeResult`."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = DEFAULT_KEY_ENV,
                 temperature: float = 0.1, max_tokens: int = 200, retries: int = 4,
                 backoff_base: float = 1.8, backoff_scale: float = 1.0,
                 requests_per_second: float = 5.0, workers: int = 4, timeout_s: float = DEFAULT_TIMEOUT_S,
                 deadline_s: float = DEFAULT_DEADLINE_S, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True):
        if not model:
            raise ValueError("HttpJudge needs a model name")
        if not (timeout_s > 0 and deadline_s > 0):
            raise ValueError(f"HttpJudge needs timeout_s and deadline_s > 0, got {timeout_s} and {deadline_s}")
        self.model = model
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.retries, self.backoff_base, self.backoff_scale = retries, backoff_base, backoff_scale
        self.workers, self.timeout_s, self.deadline_s = max(1, workers), timeout_s, deadline_s
        self._limiter = RateLimiter(requests_per_second)
        self.cache = VerdictCache(_cache_path(cache_dir, model)) if use_cache else None
        self.model_versions: set[str] = set()
        self._versions_lock = threading.Lock()
        self.identity = f"http:{model}"

    def describe(self) -> dict[str, Any]:
        return {"name": "http", "model": self.model, "base_url": self.base_url,
                "api_key_env": self.api_key_env, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "retries": self.retries,
                "backoff": f"{self.backoff_scale} * {self.backoff_base}**i s", "timeout_s": self.timeout_s,
                "deadline_s": self.deadline_s,
                "model_versions": sorted(self.model_versions),
                "cache": None if self.cache is None else str(self.cache.path)}

    def check(self) -> None:
        """Refuse, with a ValueError naming what to fix, a judge that could not judge: no key in its
        environment variable, a malformed base URL, or a server that does not answer a 1-token
        request made with the key (a refused key, an unknown model, no server)."""
        if not os.environ.get(self.api_key_env):
            raise ValueError(f"${self.api_key_env} is not set; the judge {self.identity} reads its API key from it "
                             "(export it, or choose another --judge)")
        url = urllib.parse.urlparse(self.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"base URL {self.base_url!r} (from ${BASE_URL_ENV} or base_url) is not an http(s) URL "
                             f"such as {DEFAULT_BASE_URL}")
        probe = [{"role": "system", "content": "Reply with the digit 1."}, {"role": "user", "content": "1"}]
        try:
            self._complete(probe, max_tokens=1)
        except ApiError as err:
            raise ValueError(f"a 1-token test request to {self.base_url}/chat/completions failed ({err}); "
                             f"check the key in ${self.api_key_env}, the model name {self.model!r} and the base "
                             "URL") from None

    def __call__(self, texts: Sequence[str], targets: Sequence[str]) -> JudgeResult:
        check_inputs(texts, targets)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            verdicts = list(pool.map(self._judge_one, texts, targets))
        return JudgeResult(match=np.array([v[0] for v in verdicts], np.int64),
                           reasons=[v[1] for v in verdicts], errors=[v[2] for v in verdicts])

    def _judge_one(self, text: str, target: str) -> tuple[int, str, str | None]:
        if not text.strip():
            return 0, "", "empty text"
        messages = judge_messages(text, target)
        key = cache_key(self.model, messages)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            self._note_version(cached.get("model_version"))
            return int(cached["match"]), cached["reason"], cached["error"]
        try:
            reply, version = self._complete(messages)
        except ApiError as err:
            return 0, "", f"API failure: {err}"
        match, reason, error = parse_judge_reply(reply)
        self._note_version(version)
        if self.cache is not None:
            self.cache.put(key, {"reply": reply, "match": match, "reason": reason, "error": error,
                                 "model_version": version})
        return match, reason, error

    def _note_version(self, version: str | None) -> None:
        if version:
            with self._versions_lock:
                self.model_versions.add(version)

    def _complete(self, messages: list[dict[str, str]], max_tokens: int | None = None) -> tuple[str, str | None]:
        """(reply text, server model version); retries transient failures with backoff, all within
        `deadline_s`."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens if max_tokens is None else max_tokens}).encode()
        deadline = time.monotonic() + self.deadline_s
        last, wait = "no attempt", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                wait = max(wait, self.backoff_scale * self.backoff_base ** (attempt - 1))
                if time.monotonic() + wait >= deadline:
                    last += f"; the next try (in {wait:.0f} s) would pass the {self.deadline_s:g} s deadline"
                    break
                time.sleep(wait)
            self._limiter.wait()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last += f"; the {self.deadline_s:g} s deadline passed"
                break
            wait = 0.0
            try:
                payload = self._post(body, timeout=min(self.timeout_s, remaining))
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code in (401, 403) and not os.environ.get(self.api_key_env):
                    last += f" (${self.api_key_env} is not set)"
                if err.code not in _RETRY_STATUSES:
                    break
                wait = retry_after_s(err.headers.get("Retry-After") if err.headers else None) or 0.0
                continue
            except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as err:
                reason = getattr(err, "reason", None)
                timed_out = isinstance(err, TimeoutError) or isinstance(reason, TimeoutError)
                last = (f"no reply within {min(self.timeout_s, remaining):.0f} s" if timed_out
                        else f"connection error ({type(reason or err).__name__})")
                continue
            except ValueError:  # JSON and UTF-8 decoding errors
                last = "the server's reply is not JSON"
                continue
            try:
                return payload["choices"][0]["message"]["content"] or "", payload.get("model")
            except (KeyError, IndexError, TypeError):
                last = "the server's reply has no choices[0].message.content"
        logging.warning("judge request to %s failed: %s", self.base_url, last)
        raise ApiError(last)

    def _post(self, body: bytes, timeout: float) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body,
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _cache_path(cache_dir: str | os.PathLike | None, model: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return resolve_cache_dir(cache_dir) / "judge" / f"http-{safe}.jsonl"
