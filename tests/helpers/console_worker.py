"""A launcher in miniature for tests of emojax.console: logs through every channel a run uses.

Usage: python console_worker.py LOG_FILE [absl flags]

A root-logger file handler stands for a run directory's run.log.
"""
from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging

from emojax import console

log_file = sys.argv.pop(1)


def main(argv: list[str]) -> None:
    del argv
    file_handler = std_logging.FileHandler(log_file)
    std_logging.getLogger().addHandler(file_handler)
    console.configure(flags.FLAGS)
    logging.info("library info line")
    std_logging.getLogger("jax._src.xla_bridge").info("backend probe line")
    console.say("stage %d done", 3)
    logging.warning("a warning that matters")
    file_handler.flush()


if __name__ == "__main__":
    app.run(main)
