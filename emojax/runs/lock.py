"""One writer per run directory: `<run>/.lock`, held with `fcntl.flock` for the life of the process.

The kernel releases a flock when its holder exits, however it exits (SIGKILL included), so a lock file
left behind by a dead process is stale by construction: the next launch takes the lock, notes whose it
was, and writes its own pid and start time into the file. A launch that finds the lock held exits with
one line naming the holder. The lock file is never deleted or replaced (a new inode would let two
processes each hold "the" lock); its content is rewritten in place by each holder.

A process may open the same run directory several times (a resume in a test, the pipeline's stages):
the lock it already holds is reused, and released when the last of them is closed.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

from absl import logging

from emojax.runs.validate import InputError

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None

LOCK_NAME = ".lock"
_NOT_SUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# resolved run path -> [fd of its locked lock file, how many open handles of this process use it]
_held: dict[str, list[int]] = {}
# When this process started (close enough: when it first imported emojax.runs), as the lock records it.
_STARTED = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunLockedError(InputError):
    """Another live process holds the run directory's lock."""


def _key(run: Path) -> str:
    return str(run.resolve())


def _holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not yet written its pid"
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {holder.get('pid')}{where}, started {holder.get('started')}"


def _refusal(run: Path, holder: dict[str, Any], force_new: bool) -> RunLockedError:
    if force_new:
        return RunLockedError(f"{run} is in use by another run ({_describe(holder)}); --force_new_run does not move a "
                              "run that is in use: wait for it to finish, or choose another --out")
    return RunLockedError(f"{run} is in use by another run ({_describe(holder)}); wait for it to finish, or choose "
                          "another --out")


def _try_flock(fd: int) -> bool | None:
    """True when locked, False when another process holds it, None when the filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in _NOT_SUPPORTED:
            return None
        raise


def check_not_locked(run: Path, force_new: bool = False) -> None:
    """Refuse a run directory another process holds, without creating anything (a launcher calls this
    before it loads a model, so a second launch on a busy --out fails in seconds)."""
    lock_file = run / LOCK_NAME
    if fcntl is None or _key(run) in _held or not lock_file.is_file():
        return
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return  # unreadable here: `acquire` reports it when the run is opened
    try:
        if _try_flock(fd) is False:
            raise _refusal(run, _holder(fd), force_new)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def acquire(run: Path, force_new: bool = False) -> None:
    """Take the lock of the existing directory `run` for this process, or raise RunLockedError."""
    if _key(run) in _held:
        _held[_key(run)][1] += 1
        return
    if fcntl is None:
        return
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _try_flock(fd)
        if locked is False:
            raise _refusal(run, _holder(fd), force_new)
        if locked is None:
            logging.warning("%s: this filesystem cannot lock files; a second launch on this --out would not be "
                            "stopped", run)
        previous = _holder(fd)
        if previous and previous.get("pid") != os.getpid():
            logging.info("%s: taking over the lock left by pid %s (started %s), which has exited", run,
                         previous.get("pid"), previous.get("started"))
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _STARTED}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record + b"\n", 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    _held[_key(run)] = [fd, 1]


def release(run: Path, every_handle: bool = False) -> None:
    """One handle of this process is done with `run`; the last one (or `every_handle`: the directory
    was moved away) closes the lock file, which releases the flock."""
    held = _held.get(_key(run))
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0 or every_handle:
        del _held[_key(run)]
        os.close(held[0])
