"""A launcher whose main writes to /dev/full, which fails like a full disk (ENOSPC), or waits for a
signal: run by tests of how run_launcher reports environment errors and interruptions.

Usage: python full_disk_launcher.py --mode=full|wait
"""
from __future__ import annotations

import time

from absl import flags

from emojax.launch.launcher import run_launcher

_MODE = flags.DEFINE_enum("mode", "full", ["full", "wait"], "full: write to /dev/full; wait: sleep until a signal.")
WAIT_S = 60.0


def main(argv: list[str]) -> None:
    if _MODE.value == "full":
        with open("/dev/full", "wb", buffering=0) as device:
            device.write(b"0" * 4096)
        return
    print("waiting", flush=True)
    time.sleep(WAIT_S)


if __name__ == "__main__":
    run_launcher(main)
