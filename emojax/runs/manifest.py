"""What a run was made from: flags, model identity, input hashes and the software environment.

A manifest has two parts. The *identity* (flags minus the listed non-semantic ones, the model's name,
content hash and config, the content hash of every input file) decides whether an existing run may
be resumed: any difference means its outputs would not be the ones the current invocation asks for.
The *environment* (package versions, git commit, devices, Python, start time) is recorded for the
report; a difference there is logged as a warning, not refused.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from emojax.runs.atomic import to_jsonable
from emojax.runs.validate import InputError, non_finite_paths

# Flags that never change a result: where outputs go and how progress is shown. Launchers add their
# own (only flags that provably cannot change any number belong here; batch size does not, as it can
# change float reductions).
NON_SEMANTIC_FLAGS = ("out", "run_dir", "force_new_run", "progress")
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "transformers", "emojax")
_HASH_CHUNK = 1 << 20
_REPO_ROOT = Path(__file__).resolve().parents[2]
# Content hashes of large files, keyed by (path, size, mtime): each stage hashes the model once.
_hash_memo: dict[tuple[str, int, int], str] = {}


def hash_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_CHUNK):
                digest.update(block)
        _hash_memo[key] = digest.hexdigest()
    return _hash_memo[key]


def hash_path(path: str | os.PathLike) -> str:
    """Content hash of a file, or of a directory tree (relative names and file hashes, sorted)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory to hash")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{hash_file(file)}\n".encode())
    return digest.hexdigest()


def hash_arrays(tree: Any) -> str:
    """Content hash of a nested dict of arrays (e.g. random test params): names, dtypes, shapes, bytes."""
    digest = hashlib.sha256()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key in sorted(node):
                walk(node[key], f"{prefix}/{key}")
            return
        array = np.ascontiguousarray(np.asarray(node))
        digest.update(f"{prefix}\0{array.dtype.str}\0{array.shape}\n".encode())
        digest.update(array.tobytes())

    walk(tree, "")
    return digest.hexdigest()


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data (tuples become lists, numpy values Python numbers, others str)."""
    return json.loads(json.dumps(value, default=_fallback))


def finite_jsonable(value: Any, what: str) -> Any:
    """`jsonable(value)`, refusing nan and inf: JSON has no such numbers, and nan != nan would keep a
    run's identity or a stage's fingerprint from comparing equal to itself. `what` names the value."""
    plain = jsonable(value)
    bad = non_finite_paths(plain)
    if bad:
        raise InputError(f"{what} {bad[0]} is not a finite number; nan and inf cannot be recorded")
    return plain


def _fallback(value: Any) -> Any:
    try:
        return to_jsonable(value)
    except TypeError:
        return str(value)


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Which model a run used: `content_hash` is what artefacts of the run are matched against."""

    name: str
    source: str
    content_hash: str
    config: dict[str, Any]

    @classmethod
    def from_source(cls, name: str, source: str | os.PathLike, config: Any) -> "ModelIdentity":
        """Hash the checkpoint file or directory; `config` is a dataclass (ModelConfig) or a dict."""
        return cls(name, str(Path(source).resolve()), hash_path(source), _config_dict(config))

    @classmethod
    def from_params(cls, name: str, params: Any, config: Any) -> "ModelIdentity":
        """For models with no file behind them (random test weights): hash the parameters."""
        return cls(name, "<in-memory params>", hash_arrays(params), _config_dict(config))

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return jsonable(dataclasses.asdict(config))
    return jsonable(dict(config))


def flags_dict(flags: Any) -> dict[str, Any]:
    """Plain dict of flag values from a dict or an absl FlagValues.

    For FlagValues, absl's own flags (logging verbosity, debugger, help) are left out: they are
    registered by absl modules and never change a result.
    """
    if isinstance(flags, Mapping):
        return jsonable(dict(flags))
    absl_owned = {flag.name for module, owned in flags.flags_by_module_dict().items()
                  if module.startswith("absl.") for flag in owned}
    return jsonable({k: v for k, v in flags.flag_values_dict().items() if k not in absl_owned})


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = _source_version() if name == "emojax" else "not installed"
    return versions


def _source_version() -> str:
    """emojax's version from pyproject.toml when it runs from a checkout without being installed."""
    try:
        with open(_REPO_ROOT / "pyproject.toml", "rb") as handle:
            return str(tomllib.load(handle)["project"]["version"]) + " (source)"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def git_state() -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout emojax runs from; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_REPO_ROOT), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def device_description() -> dict[str, Any]:
    import jax  # imported here: building a manifest is the first point a run needs a backend

    devices = jax.devices()
    return {"backend": jax.default_backend(), "count": len(devices),
            "kinds": sorted({d.device_kind for d in devices}), "devices": [str(d) for d in devices],
            "process_count": jax.process_count()}


def environment() -> dict[str, Any]:
    return {
        "packages": package_versions(),
        "git": git_state(),
        "devices": device_description(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def identity(flags: Any, model: ModelIdentity | None, inputs: Mapping[str, str | os.PathLike] | None,
             non_semantic: tuple[str, ...] = NON_SEMANTIC_FLAGS) -> dict[str, Any]:
    """The part of a manifest that must match for a run to be resumed."""
    recorded = flags_dict(flags) if flags is not None else {}
    bad = non_finite_paths(recorded)
    if bad:
        name, _, rest = bad[0].partition(".")
        raise InputError(f"--{name}={_brief(recorded[name])}{f' (at {rest})' if rest else ''}: expected a finite "
                         "number; nan and inf cannot be recorded in a run's manifest")
    return {
        "flags": recorded,
        "non_semantic_flags": sorted(non_semantic),
        "model": model.to_dict() if model is not None else None,
        "inputs": {name: {"path": str(Path(p).resolve()), "sha256": hash_path(p)}
                   for name, p in sorted((inputs or {}).items())},
    }


def _brief(value: Any) -> str:
    text = json.dumps(value) if value is not None else "absent"
    return text if len(text) <= 40 else text[:37] + "..."


def identity_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two identities, ignoring non-semantic flags."""
    ignored = set(recorded.get("non_semantic_flags", ())) | set(current.get("non_semantic_flags", ()))
    diffs = []
    old_flags, new_flags = recorded.get("flags", {}), current.get("flags", {})
    for key in sorted((old_flags.keys() | new_flags.keys()) - ignored):
        if old_flags.get(key, ...) != new_flags.get(key, ...):
            diffs.append(f"flag --{key}: {_brief(old_flags.get(key))} -> {_brief(new_flags.get(key))}")
    old_model, new_model = recorded.get("model") or {}, current.get("model") or {}
    for field in ("name", "content_hash"):
        if old_model.get(field) != new_model.get(field):
            diffs.append(f"model {field}: {_brief(old_model.get(field))} -> {_brief(new_model.get(field))}")
    old_cfg, new_cfg = old_model.get("config") or {}, new_model.get("config") or {}
    for key in sorted(old_cfg.keys() | new_cfg.keys()):
        if old_cfg.get(key, ...) != new_cfg.get(key, ...):
            diffs.append(f"model config {key}: {_brief(old_cfg.get(key))} -> {_brief(new_cfg.get(key))}")
    old_inputs, new_inputs = recorded.get("inputs", {}), current.get("inputs", {})
    for name in sorted(old_inputs.keys() | new_inputs.keys()):
        old, new = old_inputs.get(name), new_inputs.get(name)
        if old is None or new is None:
            diffs.append(f"input {name}: {'absent' if old is None else old['path']} -> "
                         f"{'absent' if new is None else new['path']}")
        elif old["sha256"] != new["sha256"]:
            diffs.append(f"input {name} content: {old['sha256'][:12]} -> {new['sha256'][:12]}")
    return diffs


def environment_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Differences in package versions, commit and devices (worth a warning, not a refusal)."""
    diffs = []
    old_pk, new_pk = recorded.get("packages", {}), current.get("packages", {})
    for name in sorted(old_pk.keys() | new_pk.keys()):
        if old_pk.get(name) != new_pk.get(name):
            diffs.append(f"{name} {old_pk.get(name)} -> {new_pk.get(name)}")
    old_git, new_git = recorded.get("git") or {}, current.get("git") or {}
    if old_git.get("commit") != new_git.get("commit"):
        diffs.append(f"git commit {str(old_git.get('commit'))[:12]} -> {str(new_git.get('commit'))[:12]}")
    old_dev, new_dev = recorded.get("devices", {}), current.get("devices", {})
    if (old_dev.get("backend"), old_dev.get("kinds"), old_dev.get("count")) != \
            (new_dev.get("backend"), new_dev.get("kinds"), new_dev.get("count")):
        diffs.append(f"devices {old_dev.get('count')}x{old_dev.get('kinds')} -> {new_dev.get('count')}x{new_dev.get('kinds')}")
    old_weights, new_weights = recorded.get("weights") or {}, current.get("weights") or {}
    if old_weights.get("weights_hash") != new_weights.get("weights_hash"):
        diffs.append(f"loaded weights {str(old_weights.get('weights_hash'))[:12]} -> "
                     f"{str(new_weights.get('weights_hash'))[:12]}")
    return diffs
