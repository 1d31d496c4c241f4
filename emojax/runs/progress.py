"""Progress reporting for long loops: a tqdm bar with ETA at a terminal, log lines elsewhere.

Under CI (the `CI` environment variable is set) or when stderr is not a terminal (batch jobs, log
files, pytest), a bar would fill logs with carriage returns, so the same progress is reported as a
console line (emojax.console) at most every `log_every_s` seconds, plus an absl INFO line when the
loop ends. At a terminal the bar disappears when its loop ends: the stage's own line follows.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

from absl import logging

from emojax.console import say

T = TypeVar("T")
DEFAULT_LOG_EVERY_S = 30.0


def interactive() -> bool:
    """Whether a live progress bar is wanted: a terminal on stderr and not under CI."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Count work done towards `total`; use as a context manager and call `update(n)`.

    `initial` is work already done before this process started (e.g. chunks found on disk after a
    resume); the ETA uses only the rate measured in this process.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 log_every_s: float = DEFAULT_LOG_EVERY_S, bar: bool | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self._start_count = initial
        self._log_every_s = log_every_s
        self._start = self._last_log = time.monotonic()
        self._bar = None
        if interactive() if bar is None else bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                             leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last_log >= self._log_every_s:
            self._last_log = time.monotonic()
            say("  %s", self.status_line())

    def status_line(self) -> str:
        elapsed = time.monotonic() - self._start
        counted = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{self.desc}: {counted} {self.unit}"]
        if self.total:
            parts.append(f"({100.0 * self.done / self.total:.0f}%)")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        fresh = self.done - self._start_count
        if self.total is not None and 0 < fresh and self.done < self.total:
            parts.append(f"ETA {format_seconds(elapsed / fresh * (self.total - self.done))}")
        return " ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            logging.info("%s", self.status_line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
          log_every_s: float = DEFAULT_LOG_EVERY_S) -> Iterator[T]:
    """Iterate `items`, reporting progress (total defaults to len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, log_every_s=log_every_s) as progress:
        for item in items:
            yield item
            progress.update(1)
