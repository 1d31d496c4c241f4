"""Checksums of a converted-weights cache entry: recorded when the entry is written, verified before
it is used, so a damaged entry (a zeroed block, a lost tokenizer file) is converted again instead of
being loaded.

    <entry>/checksums.json   {"format": 1, "source_hash": ..., "files": {relative path: {size, sha256}}}

Every file of the entry other than checksums.json is listed. An entry verifies when its set of files,
their sizes and their sha256 equal the record and the record names the source hash the entry was
looked up by. Hashing streams each file once; an entry verified in this process is not hashed again
while its files keep the same size, mtime and inode.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHECKSUMS_NAME = "checksums.json"
FORMAT = 1
_BLOCK = 1 << 20
# (entry path, stat signature of its files) of entries verified in this process.
_verified: set[tuple[str, tuple[tuple[str, int, int, int], ...]]] = set()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _entry_files(entry: Path) -> dict[str, Path]:
    return {p.relative_to(entry).as_posix(): p for p in sorted(entry.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS_NAME}


def record(entry: Path, source_hash: str) -> dict[str, Any]:
    """Hash every file of `entry` and write checksums.json into it; returns the record."""
    files = {name: {"size": path.stat().st_size, "sha256": _sha256(path)}
             for name, path in _entry_files(entry).items()}
    checksums = {"format": FORMAT, "source_hash": source_hash, "files": files}
    (entry / CHECKSUMS_NAME).write_text(json.dumps(checksums, indent=1, sort_keys=True))
    return checksums


def weights_hash(checksums: dict[str, Any]) -> str:
    """One hash naming the entry's bytes: the sha256 of its sorted file checksums."""
    listing = "".join(f"{name}\0{meta['size']}\0{meta['sha256']}\n" for name, meta in sorted(checksums["files"].items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def _signature(files: dict[str, Path]) -> tuple[tuple[str, int, int, int], ...]:
    stats = {name: os.stat(path) for name, path in files.items()}
    return tuple((name, s.st_size, s.st_mtime_ns, s.st_ino) for name, s in sorted(stats.items()))


def verify(entry: Path, source_hash: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the checksums record, None) when `entry` is intact, else (None, what differs)."""
    path = entry / CHECKSUMS_NAME
    if not path.is_file():
        return None, f"it has no {CHECKSUMS_NAME} (written before entries were checked, or cut short)"
    try:
        checksums = json.loads(path.read_text())
        recorded = checksums["files"]
        recorded_source = checksums["source_hash"]
    except (ValueError, KeyError, TypeError) as err:
        return None, f"its {CHECKSUMS_NAME} is unreadable ({err})"
    if recorded_source != source_hash:
        return None, f"it was converted from source {str(recorded_source)[:12]}, not {source_hash[:12]}"
    files = _entry_files(entry)
    missing = sorted(set(recorded) - set(files))
    if missing:
        return None, f"{len(missing)} of its files are missing (first: {missing[0]})"
    extra = sorted(set(files) - set(recorded))
    if extra:
        return None, f"it holds {len(extra)} files it was not written with (first: {extra[0]})"
    key = (str(entry), _signature(files))
    if key in _verified:
        return checksums, None
    for name, meta in sorted(recorded.items()):
        size = files[name].stat().st_size
        if size != meta["size"]:
            return None, f"{name} is {size:,} bytes, {meta['size']:,} when written"
        if _sha256(files[name]) != meta["sha256"]:
            return None, f"{name} has changed since it was written (its sha256 differs)"
    _verified.add(key)
    return checksums, None
