"""On-disk cache of judge replies, so a rerun (or a resumed run) pays for no call twice.

One JSON line per reply in `<cache_dir>/<file>.jsonl`, keyed by the SHA-256 of (model, prompt). Lines
are appended with a single `os.write` on a file opened with O_APPEND, under a lock, so concurrent
writers never interleave inside a line; a line cut short by a crash is skipped on reading. Only the
key, the reply text, the parsed verdict and the server-reported model version are stored: never
the prompt, a URL or a credential.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence


def cache_key(model: str, messages: Sequence[Mapping[str, str]]) -> str:
    """SHA-256 of the model name and the exact chat messages."""
    payload = json.dumps({"model": model, "messages": list(messages)}, sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    """Append-only jsonl store of {key, reply, match, reason, error, model_version}."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with open(self.path, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    self.skipped_lines += 1  # a line cut short by an interrupted write
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    self._entries[entry["key"]] = entry
                else:
                    self.skipped_lines += 1

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        record = {"key": key, **{k: v for k, v in entry.items() if k != "key"}}
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._entries[key] = record
