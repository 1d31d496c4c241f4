"""Resumable loops over items in fixed chunks: a killed sweep continues where it stopped.

Layout of one job, `<directory>/<name>/`:

    index.json          what the job computes (n_items, chunk_size, fingerprint of its inputs), the
                        kind and layout of chunk results, and for every finished chunk its file and
                        sha256
    chunk_000000.npz    chunk results: a dict of arrays (leading axis concatenated across chunks)
    chunk_000001.jsonl  ... or a list of JSON records

A chunk file is written atomically and only then entered in the index (also written atomically), so
a kill at any point loses at most the chunk in progress. A chunk file without an index entry, or
whose bytes no longer match its recorded sha256, is computed again. `assemble()` reads every chunk
back from disk, so a resumed job returns exactly what an uninterrupted one returns.

One job directory is meant for one process at a time.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from absl import logging

from emojax.console import say
from emojax.runs.atomic import write_json, write_jsonl, write_npz
from emojax.runs.manifest import finite_jsonable, hash_file
from emojax.runs.progress import DEFAULT_LOG_EVERY_S, Progress
from emojax.runs.validate import InputError, read_json, read_jsonl, read_npz

Arrays = dict[str, np.ndarray]
ChunkResult = Mapping[str, Any] | list[Any]
ComputeFn = Callable[[int, int], ChunkResult]
INDEX_NAME = "index.json"


class ChunkedJob:
    """Items [0, n_items) in chunks of `chunk_size`; `fingerprint` is any JSON-able description of the
    inputs (e.g. a hash of params and prompts) and must be the same to resume."""

    def __init__(self, directory: str | os.PathLike, name: str, n_items: int, chunk_size: int,
                 fingerprint: Any) -> None:
        if n_items < 0 or chunk_size < 1:
            raise ValueError(f"job {name!r}: need n_items >= 0 and chunk_size >= 1, got {n_items}, {chunk_size}")
        self.name, self.n_items, self.chunk_size = name, n_items, chunk_size
        self.path = Path(directory) / name
        self.fingerprint = finite_jsonable(fingerprint, f"job {name!r} fingerprint")
        self._index = self._open_index()

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_items)

    def _open_index(self) -> dict[str, Any]:
        spec = {"name": self.name, "n_items": self.n_items, "chunk_size": self.chunk_size,
                "fingerprint": self.fingerprint}
        index_path = self.path / INDEX_NAME
        if not index_path.exists():
            return {**spec, "kind": None, "layout": None, "chunks": {}}
        index = read_json(index_path)
        for key, value in spec.items():
            if index.get(key) != value:
                raise InputError(f"{index_path}: job was started with {key}={_brief(index.get(key))}, now "
                                 f"{_brief(value)}; its inputs changed, so its chunks cannot be reused "
                                 f"(start a new run or delete {self.path})")
        return index

    def _chunk_file(self, chunk: int, kind: str) -> Path:
        return self.path / f"chunk_{chunk:06d}.{'npz' if kind == 'arrays' else 'jsonl'}"

    def is_done(self, chunk: int) -> bool:
        """Listed in the index, and its file still holds the bytes recorded there."""
        entry = self._index["chunks"].get(str(chunk))
        if entry is None:
            return False
        file = self.path / entry["file"]
        if file.is_file() and hash_file(file) == entry["sha256"]:
            return True
        logging.warning("job %s: chunk %d file %s is missing or changed; computing it again", self.name, chunk, file)
        return False

    def completed(self) -> list[int]:
        return [c for c in range(self.n_chunks) if self.is_done(c)]

    def _layout_of(self, chunk: int, result: ChunkResult) -> tuple[str, Any, Any]:
        """(kind, layout, normalised result); arrays must keep names, dtypes and trailing shapes."""
        where = f"job {self.name!r} chunk {chunk}"
        if isinstance(result, Mapping):
            arrays = {str(k): np.asarray(v) for k, v in result.items()}
            for key, value in arrays.items():
                if value.ndim == 0 or value.dtype == object:
                    raise ValueError(f"{where}: array {key!r} must have a leading item axis and a numeric dtype")
            layout = {k: {"dtype": v.dtype.str, "trailing_shape": list(v.shape[1:])} for k, v in arrays.items()}
            return "arrays", layout, arrays
        if isinstance(result, list):
            return "records", None, result
        raise TypeError(f"{where}: compute_fn must return a dict of arrays or a list of records, "
                        f"got {type(result).__name__}")

    def _store(self, chunk: int, result: ChunkResult) -> None:
        kind, layout, normalised = self._layout_of(chunk, result)
        if self._index["kind"] is None:
            self._index["kind"], self._index["layout"] = kind, layout
        elif (kind, layout) != (self._index["kind"], self._index["layout"]):
            raise ValueError(f"job {self.name!r} chunk {chunk} returned {kind} {layout}, earlier chunks "
                             f"{self._index['kind']} {self._index['layout']}")
        file = self._chunk_file(chunk, kind)
        if kind == "arrays":
            write_npz(file, normalised)
        else:
            write_jsonl(file, normalised)
        start, stop = self.bounds(chunk)
        self._index["chunks"][str(chunk)] = {"start": start, "stop": stop, "file": file.name,
                                             "sha256": hash_file(file)}
        self._index["chunks"] = dict(sorted(self._index["chunks"].items(), key=lambda kv: int(kv[0])))
        write_json(self.path / INDEX_NAME, self._index)

    def run(self, compute_fn: ComputeFn, desc: str | None = None,
            log_every_s: float = DEFAULT_LOG_EVERY_S) -> Arrays | list[Any]:
        """Compute every missing chunk with compute_fn(start, stop), then return `assemble()`; progress
        is a console line at most every `log_every_s` seconds (emojax.runs.progress)."""
        self.path.mkdir(parents=True, exist_ok=True)
        todo = [c for c in range(self.n_chunks) if not self.is_done(c)]
        done_items = self.n_items - sum(stop - start for start, stop in map(self.bounds, todo))
        if done_items:
            say("  %s: resuming, %d of %d items already done", desc or self.name, done_items, self.n_items)
        with Progress(self.n_items, desc or self.name, unit="item", initial=done_items,
                      log_every_s=log_every_s) as progress:
            for chunk in todo:
                start, stop = self.bounds(chunk)
                self._store(chunk, compute_fn(start, stop))
                progress.update(stop - start)
        return self.assemble()

    def assemble(self) -> Arrays | list[Any]:
        """All chunk results in item order: arrays concatenated on axis 0, or records chained."""
        missing = [c for c in range(self.n_chunks) if not self.is_done(c)]
        if missing:
            raise RuntimeError(f"job {self.name!r}: chunks {_brief(missing)} are not done; call run() first")
        files = [self.path / self._index["chunks"][str(c)]["file"] for c in range(self.n_chunks)]
        if self._index["kind"] == "records":
            return [record for file in files for record in read_jsonl(file)]
        if not files:
            return {}
        parts = [read_npz(file)[0] for file in files]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
