"""The converted-weights cache is checked before use: a damaged entry (zeroed blocks of the same size, a
lost tokenizer, no checksums) is converted again with a warning, never loaded; an unusable cache
directory is refused before any conversion; what was loaded is named by its weights hash."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, subprocess_env
from emojax import loading
from emojax.loading import load_model
from emojax.runs import RunDir
from emojax.weights import checksums
from emojax.weights.cache import CACHE_DIR_ENV
from emojax.weights.cache_dir import CacheDirError
from hf_fixtures import make_tiny_checkpoint

BLOCK = 64 * 1024


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), family="llama", n_kv_heads=2)


def _entry(cache: Path) -> Path:
    entry, = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return entry


def _largest_file(entry: Path) -> Path:
    return max((p for p in entry.rglob("*") if p.is_file() and p.name != checksums.CHECKSUMS_NAME),
               key=lambda p: p.stat().st_size)


def _damage(file: Path, byte: bytes = b"\0") -> None:
    """Overwrite a block in the middle of `file` (at most 64 KB), keeping its size."""
    size = file.stat().st_size
    length = min(BLOCK, size // 2)
    with open(file, "r+b") as handle:
        handle.seek(size // 4)
        handle.write(byte * length)
    assert file.stat().st_size == size


def _same_params(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("byte", [b"\0", b"\xff"])
def test_a_block_overwritten_in_place_is_converted_again(checkpoint, tmp_path, caplog, byte):
    fresh = load_model(checkpoint, cache_dir=tmp_path / "cache")
    assert fresh.weights_hash is not None
    _damage(_largest_file(_entry(tmp_path / "cache")), byte)
    with caplog.at_level(logging.WARNING):
        again = load_model(checkpoint, cache_dir=tmp_path / "cache")
    assert not again.from_cache and _same_params(fresh.params, again.params)
    assert "is not used" in caplog.text and "has changed since it was written" in caplog.text
    reread = load_model(checkpoint, cache_dir=tmp_path / "cache")
    assert reread.from_cache and reread.weights_hash == again.weights_hash


def test_an_entry_without_its_tokenizer_is_converted_again(checkpoint, tmp_path, caplog):
    fresh = load_model(checkpoint, cache_dir=tmp_path / "cache")
    shutil.rmtree(_entry(tmp_path / "cache") / "tokenizer")
    with caplog.at_level(logging.WARNING):
        again = load_model(checkpoint, cache_dir=tmp_path / "cache")
    assert not again.from_cache and again.tokenizer is not None
    assert "files are missing (first: tokenizer/" in caplog.text
    assert again.tokenizer.encode("hello there") == fresh.tokenizer.encode("hello there")


def test_an_entry_without_checksums_is_converted_again(checkpoint, tmp_path):
    load_model(checkpoint, cache_dir=tmp_path / "cache")
    (_entry(tmp_path / "cache") / checksums.CHECKSUMS_NAME).unlink()
    assert not load_model(checkpoint, cache_dir=tmp_path / "cache").from_cache
    assert (_entry(tmp_path / "cache") / checksums.CHECKSUMS_NAME).is_file()


def test_an_entry_is_hashed_once_per_process(checkpoint, tmp_path, monkeypatch):
    load_model(checkpoint, cache_dir=tmp_path / "cache")
    hashed: list[Path] = []
    real = checksums._sha256
    monkeypatch.setattr(checksums, "_sha256", lambda path: hashed.append(path) or real(path))
    assert load_model(checkpoint, cache_dir=tmp_path / "cache").from_cache
    first = len(hashed)
    assert first > 0
    assert load_model(checkpoint, cache_dir=tmp_path / "cache").from_cache
    assert len(hashed) == first  # verified already, files unchanged: not hashed again


def _unusable(tmp_path: Path, kind: str) -> Path:
    if kind == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        return Path("/proc/emojax-cache")
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file" if kind == "file" else tmp_path / "a-file" / "cache"


@pytest.mark.parametrize("kind", ["file", "under a file", "proc"])
def test_an_unusable_cache_dir_is_refused_before_converting(checkpoint, tmp_path, monkeypatch, kind):
    bad = _unusable(tmp_path, kind)
    monkeypatch.setattr(loading, "_convert", lambda source: pytest.fail("converted before checking the cache"))
    with pytest.raises(CacheDirError, match=rf"cache directory {bad} cannot be used \(.+\); point "
                                            r"\$EMOJAX_CACHE_DIR or --cache_dir at a writable directory"):
        load_model(checkpoint, cache_dir=bad)


def test_the_manifest_records_the_loaded_weights(checkpoint, tmp_path):
    model = load_model(checkpoint, cache_dir=tmp_path / "cache")
    weights = {"source_hash": model.source_hash, "weights_hash": model.weights_hash, "from_cache": model.from_cache}
    with RunDir.open(tmp_path / "run", flags={"a": 1}, weights=weights) as run:
        assert run.manifest["environment"]["weights"] == weights
        assert run.invocations[-1]["weights"] == weights


def _demo(model: Path, cache: Path) -> subprocess.CompletedProcess:
    env = subprocess_env(**{CACHE_DIR_ENV: str(cache), "JAX_PLATFORMS": "cpu"})
    return subprocess.run([sys.executable, "-m", "experiments.demo", f"--model={model}", "--max_new_tokens=6"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three launcher processes
def test_launcher_reconverts_a_damaged_cache_and_replies_as_fresh(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    fresh = _demo(checkpoint, cache)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "reply:" in fresh.stdout
    _damage(_largest_file(_entry(cache)))
    damaged = _demo(checkpoint, cache)
    assert damaged.returncode == 0, damaged.stderr[-2000:]
    assert "is not used" in damaged.stderr and "converting" in damaged.stderr
    assert damaged.stdout == fresh.stdout
    shutil.rmtree(_entry(cache) / "tokenizer")
    untokenized = _demo(checkpoint, cache)
    assert untokenized.returncode == 0, untokenized.stderr[-2000:]
    assert "files are missing" in untokenized.stderr and untokenized.stdout == fresh.stdout


def test_launcher_refuses_a_cache_dir_that_is_a_file(checkpoint, tmp_path):
    bad = tmp_path / "not-a-dir"
    bad.write_text("x")
    result = _demo(checkpoint, bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cache directory {bad} cannot be used (File exists); point $EMOJAX_CACHE_DIR or --cache_dir at a "
        "writable directory")
