"""HF checkpoint directories: `config.json` plus safetensors weights (one file or an indexed shard set).

Tensors are read with the safetensors numpy API; no torch model is built and no pickle is ever
opened. PyTorch pickle checkpoints are refused because unpickling can execute arbitrary code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from emojax.model.config import ModelConfig, config_from_hf
from emojax.model.params import Params, check_params
from emojax.weights.errors import WeightsError
from emojax.weights.families import convert

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle(path: Path) -> WeightsError:
    return WeightsError(
        f"{path}: PyTorch pickle weights are not loaded, because unpickling can run arbitrary code. "
        "Convert the checkpoint to safetensors (e.g. load it once in a trusted environment and call "
        "`model.save_pretrained(dir)`, which writes model.safetensors)."
    )


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, following the shard index when there is one."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise WeightsError(f"{index}: not a valid safetensors index ({err})") from None
        files = [directory / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise WeightsError(f"{index}: lists shard {file.name!r}, which is missing from {directory}")
        return files
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return shards
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise refuse_pickle(pickles[0])
    raise WeightsError(f"{directory}: no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}) found")


class SafetensorsSource:
    """The tensors of a set of safetensors files, each read on demand."""

    def __init__(self, files: list[Path]):
        self._file_of: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        for file in files:
            try:
                handle = safe_open(str(file), framework="np")
            except (SafetensorError, OSError) as err:
                raise WeightsError(f"{file}: unreadable safetensors file ({err}); is it truncated?") from None
            self._handles[file] = handle
            for name in handle.keys():
                if name in self._file_of:
                    raise WeightsError(f"{file}: tensor {name!r} is also in {self._file_of[name]}")
                self._file_of[name] = file

    def names(self) -> set[str]:
        return set(self._file_of)

    def location(self, name: str) -> str:
        return str(self._file_of.get(name, "<checkpoint>"))

    def get(self, name: str) -> np.ndarray:
        try:
            return self._handles[self._file_of[name]].get_tensor(name)
        except SafetensorError as err:
            raise WeightsError(f"{self.location(name)}: cannot read tensor {name!r} ({err})") from None


def _merge_generation_eos(raw: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Add the EOS ids of `generation_config.json` (chat models list their end-of-turn token there)."""
    file = directory / "generation_config.json"
    if not file.is_file():
        return raw
    try:
        extra = json.loads(file.read_text()).get("eos_token_id")
    except json.JSONDecodeError as err:
        raise WeightsError(f"{file}: not valid JSON (line {err.lineno}: {err.msg})") from None
    ids: list[int] = []
    for value in (raw.get("eos_token_id"), extra):
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is not None and int(token_id) not in ids:
                ids.append(int(token_id))
    return {**raw, "eos_token_id": ids}


def hf_config_dict(directory: Path) -> dict[str, Any]:
    """The HF config dict of a checkpoint directory, in the form `emojax.model.config.config_from_hf` reads."""
    file = directory / "config.json"
    if not file.is_file():
        raise WeightsError(f"{directory}: no config.json, so this is not an HF checkpoint directory")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{file}: not valid JSON (line {err.lineno}: {err.msg})") from None
    return _merge_generation_eos(raw, directory)


def hf_config(directory: Path) -> ModelConfig:
    """The ModelConfig of an HF checkpoint directory, with unsupported math rejected."""
    return config_from_hf(hf_config_dict(directory), source=str(directory / "config.json"))


def load_hf_checkpoint(directory: str | Path) -> tuple[Params, ModelConfig]:
    """Params (numpy arrays in the checkpoint's dtype) and config of an HF safetensors directory."""
    directory = Path(directory)
    if directory.is_file():
        if directory.suffix in PICKLE_SUFFIXES:
            raise refuse_pickle(directory)
        raise WeightsError(f"{directory}: expected an HF checkpoint directory, got a file")
    if not directory.is_dir():
        raise WeightsError(f"{directory}: no such checkpoint directory")
    cfg = hf_config(directory)
    files = weight_files(directory)
    params = convert(cfg, SafetensorsSource(files), what=str(directory))
    check_params(params, cfg, source=str(directory))
    return params, cfg
