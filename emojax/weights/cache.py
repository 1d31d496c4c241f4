"""On-disk cache of converted checkpoints, keyed by a hash of the source files' contents.

An entry is a directory `<cache_dir>/<source_hash>-<dtype>/` holding
    params/        the stacked parameter pytree, saved with orbax (uncompressed: fast to read back)
    config.json    the HF-style config dict the ModelConfig is parsed from (parsed again on every
                   load, so a fix in the config parser is never hidden behind a stale entry)
    tokenizer/     the tokenizer (tokenizer.json, tokenizer_config.json, chat template), if any
    checksums.json size and sha256 of every other file, and the source hash (emojax.weights.checksums)
An entry is built in a temporary directory and renamed into place, so a visible entry is complete; it
is verified against its checksums before use, and a damaged one is converted again.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from emojax.model.config import config_from_hf
from emojax.model.params import Params, param_shapes
from emojax.weights import checksums

CACHE_DIR_ENV = "EMOJAX_CACHE_DIR"
# Part of every hash: bump when the conversion changes what an entry holds.
FORMAT_VERSION = 1


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir` if given, else $EMOJAX_CACHE_DIR, else ~/.cache/emojax."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "emojax").expanduser()


def hash_files(files: Sequence[Path], root: Path) -> str:
    """SHA-256 over the names (relative to `root`), sizes and full contents of `files`.

    SHA-256 rather than blake2b because most x86 and Arm CPUs hash it in hardware (about twice as fast).
    """
    digest = hashlib.sha256(f"emojax-weights-v{FORMAT_VERSION}".encode())
    for file in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        size = file.stat().st_size
        digest.update(f"\0{file.relative_to(root).as_posix()}\0{size}\0".encode())
        if size:
            with open(file, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
                digest.update(data)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    params: Params
    raw_config: dict[str, Any]
    tokenizer: PreTrainedTokenizerBase | None
    weights_hash: str | None = None  # emojax.weights.checksums.weights_hash of the entry read or written


def entry_path(cache_dir: Path, source_hash: str, dtype: Any) -> Path:
    return cache_dir / f"{source_hash}-{jnp.dtype(dtype).name}"


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))


def _read_tokenizer(directory: Path) -> PreTrainedTokenizerBase | None:
    if not directory.is_dir():
        return None
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)


def read_entry(path: Path, source_hash: str) -> CacheEntry | None:
    """The cached entry at `path` (params as numpy arrays), or None when absent, damaged (its files differ
    from the checksums written with it) or unreadable; a damaged or unreadable entry is removed."""
    if not path.is_dir():
        return None
    verified, problem = checksums.verify(path, source_hash)
    if verified is None:
        logging.warning("the cached conversion %s is not used: %s; converting the checkpoint again", path, problem)
        shutil.rmtree(path, ignore_errors=True)
        return None
    try:
        raw_config = json.loads((path / "config.json").read_text())
        shapes = param_shapes(config_from_hf(raw_config, source=str(path / "config.json")))
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), shapes,
                                is_leaf=lambda x: isinstance(x, tuple))
        # The tokenizer's JSON parsing overlaps with the array reads, which run outside the GIL.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            tokenizer = pool.submit(_read_tokenizer, path / "tokenizer")
            params = _checkpointer().restore(path / "params", args=ocp.args.PyTreeRestore(restore_args=as_numpy))
            return CacheEntry(params, raw_config, tokenizer.result(), checksums.weights_hash(verified))
    except Exception as err:  # a damaged or stale entry must never block loading the source itself
        logging.warning("Discarding unreadable cache entry %s (%s)", path, err)
        shutil.rmtree(path, ignore_errors=True)
        return None


def write_entry(path: Path, entry: CacheEntry, source_hash: str) -> str:
    """Store `entry` at `path` atomically with its checksums; returns its weights hash. A concurrent
    writer of the same entry wins silently (its bytes are the same conversion)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _checkpointer().save(staging / "params", args=ocp.args.PyTreeSave(entry.params))
        (staging / "config.json").write_text(json.dumps(entry.raw_config, indent=1, sort_keys=True))
        if entry.tokenizer is not None:
            entry.tokenizer.save_pretrained(str(staging / "tokenizer"))
        written = checksums.weights_hash(checksums.record(staging, source_hash))
        try:
            staging.rename(path)
        except OSError:
            if not path.is_dir():
                raise
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
