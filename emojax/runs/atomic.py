"""Atomic, reproducible file writes: a file under its final name is always complete.

Every writer fills a temporary file in the destination directory, flushes and fsyncs it, then
`os.replace`s it over the final name (atomic on POSIX and Windows) and fsyncs the directory so the
rename itself survives a power cut. Any failure part-way (a full disk raises OSError) removes the
temporary file and leaves whatever was under the final name before untouched.

Outputs are also byte-reproducible: the same values give the same bytes (npz members carry a fixed
timestamp, JSON keeps the caller's key order, floats are written with `repr`, which round-trips).
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import numpy as np

# zip's earliest representable time: a fixed member timestamp makes npz files byte-reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Reserved npz member holding JSON metadata (e.g. the model hash) next to the arrays.
NPZ_META_KEY = "__meta__"


def _fsync_dir(directory: Path) -> None:
    """Persist a rename; not every platform can open a directory, and that is harmless there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[Any]:
    """Yield a file object whose content appears at `path` only if the block finishes without error."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 honours the umask, so the final file gets the usual permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline="" if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(final)  # a failed write() names no file; a full disk should say which
        raise
    _fsync_dir(final.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def to_jsonable(value: Any) -> Any:
    """`json.dump` default hook: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def dumps_json(value: Any, indent: int | None = 2) -> str:
    separators = (",", ": ") if indent is not None else (",", ":")
    return json.dumps(value, indent=indent, separators=separators, ensure_ascii=False, default=to_jsonable)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
    write_text(path, dumps_json(value, indent) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """One compact JSON value per line, every line newline-terminated."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(dumps_json(record, indent=None) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | Sequence[Any]],
              header: Sequence[str] | None = None) -> None:
    """Rows as dicts (header = `header` or the first row's keys) or as sequences (header optional)."""
    rows = list(rows)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if rows and isinstance(rows[0], Mapping):
            columns = list(header) if header is not None else list(rows[0].keys())
            writer.writerow(columns)
            for i, row in enumerate(rows):
                if set(row.keys()) != set(columns):
                    raise ValueError(f"{path}: row {i} has columns {sorted(row)}, expected {sorted(columns)}")
                writer.writerow([row[c] for c in columns])
        else:
            if header is not None:
                writer.writerow(header)
            writer.writerows(rows)


def _write_npz_to(handle: BinaryIO, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None) -> None:
    members = dict(arrays)
    if NPZ_META_KEY in members:
        raise ValueError(f"array name {NPZ_META_KEY!r} is reserved for metadata")
    if meta is not None:
        members[NPZ_META_KEY] = np.array(dumps_json(dict(meta), indent=None))
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in members.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
    """An `np.load`-compatible npz (uncompressed, no pickles) plus optional JSON metadata.

    `meta` (e.g. {"model_hash": ...}) is stored as the member `__meta__`; read it back with
    `read_npz`.
    """
    with atomic_open(path, "wb") as handle:
        _write_npz_to(handle, arrays, meta)

