"""Model configuration: the few numbers the forward pass needs, read from an HF `config.json`.

Any config field that would change the math and that emojax does not implement is rejected with
an error naming the field, so a model is never silently run with the wrong equations.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

SUPPORTED_FAMILIES = ("llama", "qwen2")


class ConfigError(ValueError):
    """A checkpoint config that emojax cannot run faithfully."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hashable (usable as a jit static argument) description of a decoder-only transformer."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rms_eps: float
    rope_theta: float
    tie_embeddings: bool
    qkv_bias: bool
    max_position: int = 8192
    # llama3 rope scaling as a sorted tuple of (key, value); None means plain RoPE.
    rope_scaling: tuple[tuple[str, float], ...] | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_sublayers(self) -> int:
        return 2 * self.n_layers

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Fields whose non-default value changes the computation and is not implemented.
_REJECT_IF_SET = {
    "sliding_window": "sliding-window attention",
    "attn_logit_softcapping": "attention logit soft-capping",
    "final_logit_softcapping": "final logit soft-capping",
    "query_pre_attn_scalar": "a custom attention scale",
    "layer_types": "per-layer attention types",
}
_ALLOWED_ACTIVATIONS = ("silu", "swish")


def _as_eos_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope_scaling(raw: Mapping[str, Any] | None, source: str) -> tuple[tuple[str, float], ...] | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ConfigError(f"{source}: field 'rope_scaling' has type {kind!r}; only 'llama3' is implemented")
    needed = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in needed if k not in raw]
    if missing:
        raise ConfigError(f"{source}: field 'rope_scaling' lacks {missing}")
    return tuple(sorted((k, float(raw[k])) for k in needed))


def _normalise(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Express newer transformers' spellings in the older fields parsed below.

    transformers 5 writes `rope_parameters` (theta and scaling together) instead of `rope_theta` /
    `rope_scaling`, and lists `layer_types` even when every layer is plain full attention.
    """
    raw = dict(raw)
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            raw.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default" and not raw.get("rope_scaling"):
            raw["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    types = raw.get("layer_types")
    if isinstance(types, list) and types and all(t == "full_attention" for t in types):
        del raw["layer_types"]
    return raw


def config_from_hf(raw: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from the dict of an HF `config.json`, rejecting unsupported math."""
    raw = _normalise(raw)
    family = raw.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise ConfigError(
            f"{source}: field 'model_type' is {family!r}; supported families are {SUPPORTED_FAMILIES}"
        )
    for field, what in _REJECT_IF_SET.items():
        value = raw.get(field)
        if field == "sliding_window" and not raw.get("use_sliding_window", False):
            continue  # Qwen2 configs carry a window size that is disabled by default.
        if value not in (None, False, 0, [], ()):
            raise ConfigError(f"{source}: field {field!r} = {value!r} asks for {what}, which is not implemented")
    act = raw.get("hidden_act", "silu")
    if act not in _ALLOWED_ACTIVATIONS:
        raise ConfigError(f"{source}: field 'hidden_act' is {act!r}; only SiLU (SwiGLU MLP) is implemented")
    if raw.get("mlp_bias", False):
        raise ConfigError(f"{source}: field 'mlp_bias' is true; MLP biases are not implemented")
    try:
        n_heads = int(raw["num_attention_heads"])
        d_model = int(raw["hidden_size"])
        cfg = ModelConfig(
            family=family,
            vocab_size=int(raw["vocab_size"]),
            d_model=d_model,
            n_layers=int(raw["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
            head_dim=int(raw.get("head_dim") or d_model // n_heads),
            d_ff=int(raw["intermediate_size"]),
            rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", family == "qwen2")),
            qkv_bias=family == "qwen2" or bool(raw.get("attention_bias", False)),
            max_position=int(raw.get("max_position_embeddings", 8192)),
            rope_scaling=_rope_scaling(raw.get("rope_scaling"), source),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_as_eos_tuple(raw.get("eos_token_id")),
            name=str(raw.get("_name_or_path", "")),
        )
    except KeyError as err:
        raise ConfigError(f"{source}: required field {err.args[0]!r} is missing") from None
    if cfg.n_heads % cfg.n_kv_heads:
        raise ConfigError(f"{source}: num_attention_heads={cfg.n_heads} is not a multiple of "
                          f"num_key_value_heads={cfg.n_kv_heads}")
    return cfg


def load_hf_config(path: str | Path) -> ModelConfig:
    """Read `config.json` (a file or a checkpoint directory holding one)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: no config.json found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: not valid JSON (line {err.lineno}: {err.msg})") from None
    return config_from_hf(raw, source=str(file))
