"""Judge artefacts read with a checked hash: `manifest.json` beside them records each file's SHA-256.

A file the manifest lists must hash to its recorded value, else loading fails with one line naming the
file (a truncated download, a disk error or a hand-edited array would otherwise change verdicts
silently). The trainers write the manifest together with the artefacts.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from emojax.runs.atomic import write_json

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """A judge artefact that is missing, corrupt or not what its manifest records."""


def recorded_sha256(path: Path) -> str | None:
    """The SHA-256 that `manifest.json` beside `path` records for it, or None where it lists no such file."""
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"{manifest}: unreadable manifest ({error})") from None
    return listed.get(path.name)


def load_checked_npz(path: Path, *, require_manifest: bool) -> tuple[dict[str, np.ndarray], str]:
    """(arrays, sha256) of an npz whose hash matches its manifest entry (required when `require_manifest`)."""
    if not path.is_file():
        raise ArtifactError(f"judge artefact {path} is missing")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    expected = recorded_sha256(path)
    if expected is None and require_manifest:
        raise ArtifactError(f"{path}: no SHA-256 recorded for it in {path.parent / MANIFEST}")
    if expected is not None and digest != expected:
        raise ArtifactError(f"{path}: SHA-256 {digest[:16]}... differs from the recorded {expected[:16]}...; "
                            "the artefact is corrupt or was replaced")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}, digest
    except Exception as error:  # zipfile, format and pickle errors alike: one line naming the file
        raise ArtifactError(f"{path}: not a readable npz ({type(error).__name__}: {error})") from None


def write_manifest(folder: Path, files: list[Path]) -> dict[str, Any]:
    """Record (or update) the SHA-256 of `files` in folder/manifest.json; returns the manifest."""
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {"sha256": {}}
    for path in files:
        manifest["sha256"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["sha256"] = dict(sorted(manifest["sha256"].items()))
    write_json(manifest_path, manifest)
    return manifest
