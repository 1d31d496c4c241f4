"""Memory-bounded chunking of variant sweeps, shared by the scans.

A sweep of V variants runs as ceil(V / chunk) calls of one jitted function. Every call gets the same
static chunk size (the last chunk is padded by repeating its final index and the padding results are
dropped), so the function compiles once. A progress bar appears when there are many chunks, only at
a terminal and never under CI (emojax.runs.progress.interactive).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from emojax.runs.progress import interactive

Array = Any
PROGRESS_MIN_CHUNKS = 8
# Default working set: about this many one-token rows (variants x prompts) per chunk.
DEFAULT_ROWS_PER_CHUNK = 8192


def as_readout(readout: Array, batch: int, width: int) -> np.ndarray:
    """Normalise a read-out: [D] (shared) -> [B, D]; [B, D] (one per row) or [B, R, D] (R per row) kept."""
    readout = np.asarray(readout, np.float32)
    if readout.ndim == 1:
        readout = np.broadcast_to(readout, (batch, readout.shape[0]))
    if readout.ndim not in (2, 3) or readout.shape[0] != batch or readout.shape[-1] != width:
        raise ValueError(f"readout has shape {readout.shape}; expected [{width}], [{batch}, {width}] "
                         f"or [{batch}, R, {width}]")
    return readout


def default_chunk(batch: int, rows: int = DEFAULT_ROWS_PER_CHUNK) -> int:
    """Variants per chunk so that a chunk holds about `rows` one-token rows."""
    return max(1, rows // max(batch, 1))


def fit_chunk(n: int, chunk: int) -> int:
    """The chunk size actually used for n variants: the fewest chunks of at most `chunk` variants,
    made equal, so the padding of the last chunk stays small (e.g. 1536 neurons with chunk=1024 run
    as two chunks of 768, not 1024 + 512 padded to 1024)."""
    chunk = max(1, min(chunk, n))
    return -(-n // -(-n // chunk))


def progress(iterable: Sequence[Any] | range, total: int, desc: str) -> Any:
    quiet = not interactive() or total < PROGRESS_MIN_CHUNKS
    return tqdm(iterable, total=total, desc=desc, disable=quiet, leave=False)


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def padded_index(start: int, stop: int, chunk: int) -> np.ndarray:
    """Indices start..stop-1, padded to `chunk` entries by repeating the last one."""
    idx = np.arange(start, start + chunk)
    return np.minimum(idx, stop - 1).astype(np.int32)


def map_chunks(fn: Callable[[np.ndarray], Any], n: int, chunk: int, desc: str) -> Any:
    """Concatenate fn(idx)[:len] over fixed-size padded index chunks covering range(n).

    fn returns an array (or a tuple of arrays) whose leading axis follows idx."""
    chunk = fit_chunk(n, chunk)
    bounds = chunk_bounds(n, chunk)
    outs = []
    for start, stop in progress(bounds, len(bounds), desc):
        got = jax.device_get(fn(padded_index(start, stop, chunk)))
        outs.append(jax.tree_util.tree_map(lambda a, k=stop - start: np.asarray(a)[:k], got))
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts, axis=0), *outs)
