"""Stage bookkeeping: fingerprints of a stage's inputs, and the done.json that marks it finished.

Every stage ends with `mark_finished(run, stage, fingerprint, summary)`, which records the
fingerprint and the sha256 of every output; a later run skips the stage only while
`finished_summary` finds the same fingerprint and the outputs as the stage left them; a changed
fingerprint recomputes the stage in fresh job directories, and a changed output recomputes it
(reusing its finished chunks).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from absl import logging

from emojax.data import SevRecord
from emojax.runs.validate import read_json
from emojax.runs.chunks import INDEX_NAME
from emojax.runs.manifest import finite_jsonable, hash_file, jsonable
from emojax.runs.rundir import DONE_NAME, RunDir


def digest(value: Any) -> str:
    """Short content hash of any JSON-able value (fingerprints, job names)."""
    text = json.dumps(finite_jsonable(value, "fingerprint"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def records_digest(records: Sequence[SevRecord]) -> str:
    """Content hash of a dataset (the records actually used, after any subsampling)."""
    return digest([r.to_json() for r in records])


def model_hash(ctx: Any) -> str:
    """The hash that stamps this run's artefacts: the manifest's model, else the loaded model's."""
    return ctx.run.model_hash or ctx.model.source_hash


def judge_identity(judge: Any) -> str:
    """What identifies a judge in fingerprints: its `identity`/`name` attribute, else its type."""
    for attribute in ("identity", "name"):
        value = getattr(judge, attribute, None)
        if value:
            return str(value)
    return f"{type(judge).__module__}.{type(judge).__qualname__}"


def finished_summary(run: RunDir, stage: str, fingerprint: Any) -> dict[str, Any] | None:
    """The stored summary when `stage` finished with this fingerprint and its outputs are as it left
    them; None when it must run."""
    path = run.path / stage / DONE_NAME
    if not path.is_file():
        return None
    done = read_json(path)
    if done.get("fingerprint") != finite_jsonable(fingerprint, f"stage {stage} fingerprint"):
        logging.warning("stage %s: finished earlier with different inputs; computing it again", stage)
        return None
    changed = changed_outputs(run.path / stage, done.get("outputs", {}))
    if changed:
        logging.warning("stage %s: %s changed since the stage finished; computing it again", stage,
                        ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else ""))
        return None
    logging.info("stage %s: finished earlier with the same inputs; skipped", stage)
    return done["summary"]


def mark_finished(run: RunDir, stage: str, fingerprint: Any, summary: Mapping[str, Any]) -> None:
    run.mark_done(stage, {"fingerprint": finite_jsonable(fingerprint, f"stage {stage} fingerprint"),
                          "outputs": output_hashes(run.path / stage), "summary": jsonable(dict(summary))})


def output_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every output file of a stage, by path relative to its directory. done.json,
    temporaries and chunk-job directories (which check their own chunks) are left out."""
    jobs = {index.parent for index in directory.rglob(INDEX_NAME)}
    hashes = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        if file.name == DONE_NAME or file.name.endswith(".tmp") or jobs.intersection(file.parents):
            continue
        hashes[file.relative_to(directory).as_posix()] = hash_file(file)
    return hashes


def changed_outputs(directory: Path, recorded: Mapping[str, str]) -> list[str]:
    """The recorded outputs that are missing or whose bytes differ from those done.json recorded."""
    return [name for name, sha in recorded.items()
            if not (directory / name).is_file() or hash_file(directory / name) != sha]
