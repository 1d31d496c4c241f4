"""An OpenAI-compatible stub endpoint on 127.0.0.1 whose failures a test scripts.

    with StubJudgeServer(plan=["hang", "ok"]) as server:   # first request hangs, then every one answers
        ...server.url, server.requests

Each request takes the next step of `plan` (the last one repeats):
    ok        200 with a JSON verdict {"match": 1}
    hang      accepts the request and sends nothing until the server stops (at most `hang_s`)
    cut       200 announcing a longer body than it sends, then closes (IncompleteRead)
    reset     closes the connection without any reply
    garbage   200 with a body that is not JSON
    429:N     429 with `Retry-After: N`
    slow:S    answers like ok after S seconds
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

VERDICT = json.dumps({"model": "stub-1", "choices": [{"message": {"role": "assistant",
                                                                   "content": '{"match": 1, "reason": "stub"}'}}]})


class StubJudgeServer:
    def __init__(self, plan: Sequence[str] = ("ok",), hang_s: float = 30.0) -> None:
        self.plan, self.hang_s = list(plan), hang_s
        self.requests = 0
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with server._lock:
                    step = server.plan[min(server.requests, len(server.plan) - 1)]
                    server.requests += 1
                    server.times.append(time.monotonic())
                server.answer(self, step)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, handler: BaseHTTPRequestHandler, step: str) -> None:
        kind, _, argument = step.partition(":")
        if kind == "hang":
            self._stopped.wait(self.hang_s)
            return
        if kind == "reset":
            handler.close_connection = True
            return
        if kind == "slow":
            self._stopped.wait(float(argument))
        if kind == "429":
            handler.send_response(429)
            handler.send_header("Retry-After", argument)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = b"<html>busy</html>" if kind == "garbage" else VERDICT.encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body) + (100 if kind == "cut" else 0)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2] if kind == "cut" else body)
        if kind == "cut":
            handler.close_connection = True

    def __enter__(self) -> "StubJudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
