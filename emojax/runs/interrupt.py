"""SIGINT and SIGTERM end a launcher with one line and the shell's status for the signal (130, 143).

SIGTERM is turned into `Terminated`, a BaseException like KeyboardInterrupt, so it unwinds the stack
the same way: atomic writes remove their temporary files, finished chunks stay on disk, and the same
command resumes the run.
"""
from __future__ import annotations

import signal
from typing import Any

INTERRUPTED = "interrupted; rerun the same command to resume"


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, so `except Exception` blocks do not swallow it)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def exit_status(err: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
