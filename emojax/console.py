"""What a launcher shows a person: short console lines by default, the full log on request.

Under absl every library logs to stderr at INFO: orbax's checkpoint internals, jax's backend probing,
transformers' advice, emojax's own bookkeeping. A launcher calls `configure(FLAGS)` once flags are
parsed. Unless `--verbosity`, `-v`, `--alsologtostderr` or `--logtostderr` was given, the log stream
then keeps only warnings and errors (a directions-rule fallback, judge failures, a changed chunk, a
run moved aside), and `say(...)` lines carry the run's story: one per stage, progress with an ETA
on long loops, the model conversion, the resume of a run. Given any of those flags, the full log
comes back and `say` lines are part of it.

`say` logs at INFO on the `emojax.console` logger, so without `configure` (tests, notebooks) its
lines are ordinary log records.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from absl import logging as absl_logging

CONSOLE = logging.getLogger("emojax.console")
CONSOLE.setLevel(logging.INFO)  # console lines are INFO records whatever the root logger's level
_VERBOSE_FLAGS = ("verbosity", "alsologtostderr", "logtostderr")
_started = time.monotonic()


def verbose_requested(flag_values: Any) -> bool:
    """Whether the user asked for the log stream (any of absl's logging flags given explicitly)."""
    return any(name in flag_values and flag_values[name].present for name in _VERBOSE_FLAGS)


def configure(flag_values: Any) -> None:
    """Set up a launcher's output from its parsed absl flags.

    Quiet mode raises the level of absl's stderr handler only: loggers keep their levels, so a run's
    own log file (RunDir's run.log) still receives every INFO record, console lines included."""
    global _started
    _started = time.monotonic()
    if verbose_requested(flag_values):
        return
    absl_logging.get_absl_handler().setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.set_verbosity_error()
    if not CONSOLE.handlers:  # only configure adds one
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ElapsedFormatter())
        CONSOLE.addHandler(handler)


def say(message: str, *args: Any) -> None:
    """One console line (printf-style arguments, like logging); it also reaches every log handler."""
    CONSOLE.info(message, *args, stacklevel=2)


class _ElapsedFormatter(logging.Formatter):
    """`[mm:ss] message`: time since the launcher started, which is what a person waiting wants."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(time.monotonic() - _started)
        return f"[{seconds // 60:02d}:{seconds % 60:02d}] {record.getMessage()}"
