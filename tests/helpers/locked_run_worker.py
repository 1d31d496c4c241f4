"""Holds a run directory while a test launches a second process on it.

Usage: python locked_run_worker.py RUN_DIR RELEASE_FILE

Opens RUN_DIR as a run (which locks it), prints `locked`, waits until RELEASE_FILE exists (at most
60 s), writes `work/out.txt`, marks the stage done and prints `finished`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from emojax.runs import RunDir, write_text

WAIT_S = 60.0
FLAGS = {"worker": "first"}


def main(run_dir: str, release: str) -> None:
    with RunDir.open(run_dir, flags=FLAGS, log_to_file=False) as run:
        print("locked", flush=True)
        deadline = time.monotonic() + WAIT_S
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        write_text(run.stage("work") / "out.txt", "written by the first run\n")
        run.mark_done("work")
    print("finished", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
