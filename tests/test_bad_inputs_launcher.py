"""Launchers given one bad flag or input: one line on stderr, exit status 2, and the run directory
neither created nor touched. Every check runs before the model loads, so each case takes a few
seconds (the child process's imports)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO_ROOT, subprocess_env
from emojax.runs import RunDir

KEY_ENV = "OPENAI_API_KEY"


def _launch(module: str, out: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m module --out=out flags...`; the API key variable is set only when `env` sets it."""
    environment = subprocess_env(EMOJAX_CACHE_DIR=str(out.parent / "cache"), **env)
    if KEY_ENV not in env:
        environment.pop(KEY_ENV, None)
    return subprocess.run([sys.executable, "-m", module, f"--out={out}", *flags], capture_output=True, text=True,
                          env=environment, cwd=REPO_ROOT, timeout=300)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture()
def existing_run(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A run directory that already exists (any identity), and the bytes of every file in it."""
    out = tmp_path / "run"
    RunDir.open(out, flags={"earlier": True}, log_to_file=False)
    return out, _snapshot(out)


class _RefusingServer:
    """An OpenAI-compatible endpoint that answers every request with 401."""

    def __init__(self) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server.requests += 1
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps({"error": {"message": "Incorrect API key provided"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "_RefusingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _assert_one_line_refusal(result: subprocess.CompletedProcess, pattern: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


# (launcher, flags, message pattern): the rows of docs/runs.md's table of bad inputs.
CASES = [
    ("experiments.elicit", ["--steer_alpha=nan"], r"--steer_alpha=nan: expected a finite number > 0$"),
    ("experiments.elicit", ["--steer_alpha=inf"], r"--steer_alpha=inf: expected a finite number > 0$"),
    ("experiments.elicit", ["--min_complete_groups=-3"], r"--min_complete_groups=-3: expected an integer >= 1$"),
    ("experiments.elicit", ["--modulation_scale=0"], r"--modulation_scale=0.0: expected a finite number > 0$"),
    ("experiments.elicit", ["--seed=-1"], r"--seed=-1: expected an integer >= 0 and < 4294967296$"),
    ("experiments.elicit", ["--preset=huge"], r"flag --preset=huge: value should be one of <full\|quick\|standard>"),
    ("experiments.elicit", ["--train=missing.jsonl"], r"missing.jsonl: no such file"),
    ("experiments.elicit", ["--model=missing.gguf"], r"--model=missing.gguf: 'missing.gguf' is neither a registered"),
    ("experiments.elicit", ["--judge=oracle"], r"--judge=oracle: unknown judge spec 'oracle'"),
    ("experiments.elicit", ["--judge=http:gpt-4o-mini"], r"--judge=http:gpt-4o-mini: \$OPENAI_API_KEY is not set"),
    ("experiments.elicit", ["--mesh=0x1"], r"error: --mesh='0x1': expected 'none', 'auto' or DATAxMODEL"),
    ("experiments.elicit", ["--mesh=4096x1"], r"--mesh=4096x1 does not fit the \d+ device\(s\) present; use "
                                              r"--mesh=auto"),
    ("experiments.elicit", ["--split=validation"], r"--split='validation': expected train, test, both"),
    ("experiments.sublayer", ["--alphas=1,nan"], r"--alphas=1,nan: expected positive numbers$"),
    ("experiments.sublayer", ["--alphas=0.5,-1"], r"--alphas=0.5,-1: expected positive numbers$"),
    ("experiments.validation", ["--lambdas=inf"], r"--lambdas=inf: expected positive numbers$"),
    ("experiments.causal", ["--prompts_per_emotion=-1"], r"flag --prompts_per_emotion=-1: .*not a non-negative"),
]


@pytest.mark.parametrize("module, flags, pattern", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(tmp_path, module, flags, pattern):
    out = tmp_path / "run"
    _assert_one_line_refusal(_launch(module, out, *flags), pattern)
    assert not out.exists()


def test_an_existing_run_directory_is_left_as_it_was(existing_run):
    out, before = existing_run
    _assert_one_line_refusal(_launch("experiments.elicit", out, "--steer_alpha=nan"), r"--steer_alpha=nan")
    assert _snapshot(out) == before


def test_a_judge_endpoint_that_refuses_the_key_stops_the_run_at_start_up(existing_run):
    out, before = existing_run
    with _RefusingServer() as server:
        result = _launch("experiments.elicit", out, "--judge=http:gpt-4o-mini", "--split=train",
                         OPENAI_BASE_URL=server.url, **{KEY_ENV: "sk-test-refused"})
    line = _assert_one_line_refusal(result, r"--judge=http:gpt-4o-mini: a 1-token test request to .* failed "
                                            r"\(HTTP 401\); check the key in \$OPENAI_API_KEY")
    assert "sk-test-refused" not in result.stderr + line
    assert server.requests == 1  # one request, before any generation; 401 is not retried
    assert _snapshot(out) == before


def test_a_malformed_judge_url_is_refused(tmp_path):
    out = tmp_path / "run"
    result = _launch("experiments.elicit", out, "--judge=http:gpt-4o-mini", OPENAI_BASE_URL="localhost:8000/v1",
                     **{KEY_ENV: "sk-test"})
    _assert_one_line_refusal(result, r"base URL 'localhost:8000/v1' .* is not an http\(s\) URL")
    assert not out.exists()


def test_verbosity_1_shows_the_traceback(tmp_path):
    out = tmp_path / "run"
    result = _launch("experiments.elicit", out, "--steer_alpha=nan", "--verbosity=1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "InputError: --steer_alpha=nan" in result.stderr
    assert not out.exists()
