"""Filesystem errors that are the environment's fault, not the program's: one line saying what
happened, where and how to fix it, instead of a traceback."""
from __future__ import annotations

import errno

_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space, then rerun the same command to resume",
    errno.EDQUOT: "the disk quota is exceeded; free some space, then rerun the same command to resume",
    errno.EROFS: "the filesystem is read-only; choose a writable location",
}


def environment_message(err: BaseException) -> str | None:
    """The one-line message for a full disk, an exceeded quota or a read-only filesystem, else None."""
    if not isinstance(err, OSError) or err.errno not in _ADVICE:
        return None
    what = f"cannot write {err.filename}" if err.filename else "a write failed"
    return f"{what}: {_ADVICE[err.errno]}"
