"""The run directory: one per experiment invocation, safe to resume, never silently overwritten.

    <run>/manifest.json      identity (flags, model, input hashes) + environment of the first start
    <run>/invocations.jsonl  one record per start or resume (time, argv, versions, commit, devices)
    <run>/run.log            absl log of every invocation (also shown on stderr)
    <run>/.lock              held by the one process writing the run (emojax.runs.lock)
    <run>/<stage>/           one subdirectory per stage; <stage>/done.json once it has finished

`RunDir.open` creates the directory, or resumes it when its manifest has the same identity. A
different identity is refused with one line naming the differences, unless `force_new` is set: then
the old directory is renamed to `<run>.old-<UTC time>` and a fresh run starts. A directory another
live process holds is refused (`RunLockedError`), and never moved aside.
"""
from __future__ import annotations

import datetime
import logging as std_logging
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from absl import logging

from emojax.console import say
from emojax.runs import lock
from emojax.runs import manifest as manifest_lib
from emojax.runs.atomic import write_json, write_jsonl
from emojax.runs.manifest import NON_SEMANTIC_FLAGS, ModelIdentity
from emojax.runs.validate import InputError, read_json, read_jsonl

MANIFEST_NAME = "manifest.json"
INVOCATIONS_NAME = "invocations.jsonl"
LOG_NAME = "run.log"
DONE_NAME = "done.json"
FORCE_FLAG = "force_new_run"
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RunMismatchError(InputError):
    """An existing run directory was made from different flags, model or inputs."""


def define_run_flags() -> None:
    """Define --out and --force_new_run on absl's global FLAGS (call once, at launcher import)."""
    from absl import flags

    flags.disclaim_key_flags()  # the calling launcher owns these flags, so its --help lists them
    flags.DEFINE_string("out", None, "Run directory: created, or resumed if its manifest matches.")
    flags.DEFINE_bool(FORCE_FLAG, False, "Move an existing run directory aside and start a new run.")


def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _is_empty(path: Path) -> bool:
    """No entries other than the lock file and leftover temporaries of an interrupted first manifest write."""
    return all(p.name == lock.LOCK_NAME or (p.name.startswith(".") and p.name.endswith(".tmp"))
               for p in path.iterdir())


def check_out_creatable(path: Path) -> None:
    """`path` is a directory, or could be created: its nearest existing ancestor is a writable
    directory. Checked before a model loads; creates nothing."""
    if path.exists():
        if not path.is_dir():
            raise InputError(f"--out={path}: exists and is not a directory; choose another --out")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"--out={path}: the directory is not writable; choose another --out")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"--out={path}: cannot be created, because {ancestor} is not a directory; choose "
                         "another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--out={path}: cannot be created, because {ancestor} is not writable; choose another "
                         "--out")


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out={path}: cannot create the run directory ({err.strerror or err}); choose "
                         "another --out") from None


def _move_aside(path: Path) -> Path:
    target = path.with_name(f"{path.name}.old-{_utc_stamp()}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.old-{_utc_stamp()}-{suffix}")
    os.replace(path, target)
    return target


class RunDir:
    """A handle on a run directory. `RunDir(path)` only reads; `RunDir.open(...)` starts or resumes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.moved_aside: Path | None = None
        self._log_handler: std_logging.Handler | None = None
        self._locked = False  # only a handle from `open` holds the lock

    @property
    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / MANIFEST_NAME)

    @property
    def model_hash(self) -> str | None:
        """Content hash of the run's model, to stamp on (and check against) its artefacts."""
        model = self.manifest["identity"]["model"]
        return model["content_hash"] if model else None

    @property
    def invocations(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / INVOCATIONS_NAME)

    @classmethod
    def open(cls, path: str | os.PathLike, *, flags: Any, model: ModelIdentity | None = None,
             inputs: Mapping[str, str | os.PathLike] | None = None,
             non_semantic: tuple[str, ...] = NON_SEMANTIC_FLAGS, force_new: bool = False,
             log_to_file: bool = True, weights: Mapping[str, Any] | None = None) -> "RunDir":
        """Start a run in `path`, or resume the run there if it has the same identity.

        `flags`: an absl FlagValues or a dict. `inputs`: named data files and upstream artefacts,
        recorded by content hash. `non_semantic`: flag names that cannot change any result.
        `weights`: what this invocation loaded (e.g. the cache entry's weights hash), recorded in the
        manifest's environment and in each invocation's record. The directory stays locked by this
        process until `close()` or exit.
        """
        run = cls(path)
        identity = manifest_lib.identity(flags, model, inputs, tuple(non_semantic))
        environment = manifest_lib.environment()
        if weights is not None:
            environment["weights"] = dict(weights)
        resumed = run._claim(identity, force_new)
        run._locked = True
        if not resumed:
            write_json(run.path / MANIFEST_NAME, {"format": 1, "identity": identity, "environment": environment})
        if log_to_file:
            run._attach_log()
        if run.moved_aside is not None:
            logging.warning("moved the previous run in %s aside to %s", run.path, run.moved_aside)
        if resumed:
            changed = manifest_lib.environment_differences(run.manifest["environment"], environment)
            say("resuming the run in %s: finished stages and chunks are reused", run.path)
            if changed:
                logging.warning("resuming %s in a different environment (results may differ in the last "
                                "bits): %s", run.path, "; ".join(changed))
        previous = run.invocations if (run.path / INVOCATIONS_NAME).exists() else []
        write_jsonl(run.path / INVOCATIONS_NAME, previous + [{"resumed": resumed, **environment}])
        return run

    def _claim(self, identity: dict[str, Any], force_new: bool) -> bool:
        """Lock `path` and make it ours; True when an existing run with the same identity is resumed."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} exists and is not a directory")
        _make_dir(self.path)
        lock.acquire(self.path, force_new)
        try:
            return self._claim_locked(identity, force_new)
        except BaseException:
            lock.release(self.path)
            raise

    def _claim_locked(self, identity: dict[str, Any], force_new: bool) -> bool:
        has_manifest = (self.path / MANIFEST_NAME).is_file()
        if not has_manifest and _is_empty(self.path):
            return False
        if force_new:
            self.moved_aside = _move_aside(self.path)
            lock.release(self.path, every_handle=True)  # its lock file moved with it; the new one gets its own
            _make_dir(self.path)
            lock.acquire(self.path, force_new)
            return False
        if not has_manifest:
            raise RunMismatchError(f"{self.path} exists but is not a run directory (no {MANIFEST_NAME}); "
                                   f"choose another --out, or pass --{FORCE_FLAG} to move it aside")
        differences = manifest_lib.identity_differences(self.manifest["identity"], identity)
        if differences:
            raise RunMismatchError(f"{self.path} holds a run made differently ({'; '.join(differences)}); "
                                   f"pass --{FORCE_FLAG} to move it aside and start a new run, or choose "
                                   f"another --out")
        return True

    def _attach_log(self) -> None:
        """Copy every log record (absl and std logging both reach the root logger) into run.log."""
        handler = std_logging.FileHandler(self.path / LOG_NAME, mode="a", encoding="utf-8")
        handler.setFormatter(logging.PythonFormatter())
        std_logging.getLogger().addHandler(handler)
        self._log_handler = handler

    def close(self) -> None:
        """Stop copying log records to run.log, and release the directory's lock."""
        if self._log_handler is not None:
            std_logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if self._locked:
            lock.release(self.path)
            self._locked = False

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stage(self, name: str) -> Path:
        """The stage's output directory (created)."""
        if not _STAGE_NAME.match(name):
            raise ValueError(f"stage name {name!r}: use letters, digits, '_', '-', '.'")
        path = self.path / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage: str) -> bool:
        return (self.path / stage / DONE_NAME).is_file()

    def mark_done(self, stage: str, summary: Mapping[str, Any] | None = None) -> None:
        """Record that every output of `stage` is written; a resumed run then skips the stage."""
        write_json(self.stage(stage) / DONE_NAME, {"finished": _utc_stamp(), **dict(summary or {})})


def set_determinism(seed: int = 0) -> dict[str, Any]:
    """Settings for bitwise-identical reruns on the same machine; returns them for the manifest.

    - GPU: XLA picks non-deterministic kernels (atomics in scatter and some reductions, autotuned
      convolution algorithms) unless `--xla_gpu_deterministic_ops=true` is in XLA_FLAGS, which XLA
      reads once when the backend starts: call this before the first JAX computation.
    - CPU and TPU: compiled XLA programs are deterministic for a fixed program, device count and
      thread count; nothing to set.
    - Randomness: pass `jax.random.key(seed)` explicitly; this also seeds Python's `random` and
      NumPy's legacy global generator for any library code that uses them.
    - Same shapes everywhere: batch size and chunk size change how reductions are split, so they
      are part of a run's identity (never list them as non-semantic flags).
    """
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_deterministic_ops" not in xla_flags:
        os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_gpu_deterministic_ops=true".strip()
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = False
    if started:
        logging.warning("set_determinism() called after JAX started its backend: XLA_FLAGS changes apply "
                        "only to the next process")
    random.seed(seed)
    np.random.seed(seed)
    return {"seed": seed, "XLA_FLAGS": os.environ["XLA_FLAGS"], "backend_started_before": started}
