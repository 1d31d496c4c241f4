"""Whether the converted-weights cache directory can be used, checked before any conversion: a
conversion takes minutes, and its result must not be lost to a cache that cannot be written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from emojax.weights.errors import WeightsError

FIX = "point $EMOJAX_CACHE_DIR or --cache_dir at a writable directory"


class CacheDirError(WeightsError):
    """The cache directory is not a writable directory (a file, read-only, under /proc, ...)."""


def check_cache_dir(path: Path) -> None:
    """Create `path` if needed and write (then remove) a probe file in it; CacheDirError if either fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=path)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CacheDirError(f"cache directory {path} cannot be used ({reason}); {FIX}") from None
