"""Model configuration: the few numbers the forward pass needs, read from an HF `config.json`.

Any config field that would change the math and that emojax does not implement is rejected with
an error naming the field, so a model is never silently run with the wrong equations.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

# HF `model_type` -> emojax family name (the key of the weight-name rules in emojax/weights/families.py).
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral", "gemma2": "gemma2",
               "gemma3_text": "gemma3"}
SUPPORTED_FAMILIES = tuple(MODEL_TYPES.values())
# Families with Gemma's block: norms used as (1 + w) in float32, four norms per layer (the branch outputs are
# normed before they enter the residual), tanh-GELU MLP, embeddings scaled by sqrt(d_model).
GEMMA_FAMILIES = ("gemma2", "gemma3")
FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"
ACTIVATIONS = ("silu", "gelu_tanh")


class ConfigError(ValueError):
    """A checkpoint config that emojax cannot run faithfully."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hashable (usable as a jit static argument) description of a decoder-only transformer.

    The fields after `name` describe the block's options (emojax/model/block.py); their defaults are
    the Llama block, so a Llama or Qwen2 config is unchanged by them.
    """

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
    # RMSNorm gain = norm_offset + w, the product taken in float32 when the offset is set (Gemma: 1).
    norm_offset: float = 0.0
    # RMSNorm (with gain, over each head's width) of the queries and keys before RoPE (Qwen3, Gemma 3).
    qk_norm: bool = False
    # A norm on each branch output before it enters the residual (Gemma 2/3's post-attention and
    # post-feedforward norms); the MLP's input norm is then Gemma's pre-feedforward norm.
    post_norms: bool = False
    activation: str = "silu"           # the MLP gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, tanh form)
    # Scores are q.k * query_pre_attn_scalar ** -0.5 when set (Gemma), else head_dim ** -0.5.
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None   # scores <- cap * tanh(scores / cap) before the mask (Gemma 2)
    final_softcap: float | None = None  # logits <- cap * tanh(logits / cap) (Gemma 2)
    # Sliding-window attention: a query sees the `sliding_window` cache slots ending at its own.
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] = ()  # per layer: uses the window (empty: none does)
    # RoPE base of the sliding layers, which then use plain RoPE (Gemma 3's local layers); None: the same
    # RoPE as every other layer.
    rope_local_theta: float | None = None
    embed_scale: float | None = None    # embeddings times this, cast to the compute dtype (Gemma: sqrt(D))

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_sublayers(self) -> int:
        return 2 * self.n_layers

    @property
    def float16_overflows(self) -> bool:
        """Gemma's residual stream exceeds float16's range (its weights were trained in bfloat16), so a
        float16 forward of it becomes inf; conditions the paper decodes in float16 use bfloat16 there."""
        return self.family in GEMMA_FAMILIES

    @property
    def attn_scale(self) -> float:
        scalar = self.head_dim if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar
        return scalar ** -0.5

    def is_sliding(self, layer: int) -> bool:
        return bool(self.sliding_layers) and self.sliding_layers[layer]

    def window_of(self, layer: int) -> int | None:
        """The attention window of `layer` in cache slots, or None for full attention."""
        return self.sliding_window if self.is_sliding(layer) else None

    def local_rope_of(self, layer: int) -> bool:
        """Whether `layer` uses the local RoPE base `rope_local_theta`."""
        return self.rope_local_theta is not None and self.is_sliding(layer)

    @property
    def uniform_layers(self) -> bool:
        """Every layer has the same window and RoPE (then no per-layer settings are scanned)."""
        return len({(self.window_of(l), self.local_rope_of(l)) for l in range(self.n_layers)}) <= 1

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Fields whose non-default value changes the computation and is not implemented, per family (fields a
# family implements are read below instead).
_REJECT_IF_SET = {
    "sliding_window": "sliding-window attention",
    "attn_logit_softcapping": "attention logit soft-capping",
    "final_logit_softcapping": "final logit soft-capping",
    "query_pre_attn_scalar": "a custom attention scale",
    "layer_types": "per-layer attention types",
    "use_bidirectional_attention": "bidirectional attention",
    "mlp_bias": "MLP biases",
}
_IMPLEMENTED = {
    "llama": (),
    "qwen2": ("sliding_window", "layer_types"),
    "qwen3": ("sliding_window", "layer_types"),
    "mistral": ("sliding_window",),
    "gemma2": ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
               "layer_types"),
    "gemma3": ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
               "layer_types"),
}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
# What transformers' config classes assume for a field a Gemma config.json leaves out.
_GEMMA_DEFAULTS = {
    "gemma2": dict(head_dim=256, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                   sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   tie_word_embeddings=True, rope_theta=10000.0, window_pattern=2),
    "gemma3": dict(head_dim=256, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                   sliding_window=4096, attn_logit_softcapping=None, final_logit_softcapping=None,
                   tie_word_embeddings=True, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                   window_pattern=6),
}


def _as_eos_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope_scaling(raw: Mapping[str, Any] | None, source: str,
                  field: str = "rope_scaling") -> tuple[tuple[str, float], ...] | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ConfigError(f"{source}: field {field!r} has type {kind!r}; only 'llama3' is implemented")
    needed = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in needed if k not in raw]
    if missing:
        raise ConfigError(f"{source}: field {field!r} lacks {missing}")
    return tuple(sorted((k, float(raw[k])) for k in needed))


def _normalise(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Express newer transformers' spellings in the older fields parsed below.

    transformers 5 writes `rope_parameters` (theta and scaling together) instead of `rope_theta` /
    `rope_scaling`; for Gemma 3 it holds one such dict per layer type, the sliding layers' base being
    the older `rope_local_base_freq`. It also lists `layer_types` even when every layer is plain
    full attention.
    """
    raw = dict(raw)
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict) and set(rope) & {FULL_ATTENTION, SLIDING_ATTENTION}:
        unknown = sorted(set(rope) - {FULL_ATTENTION, SLIDING_ATTENTION})
        if unknown:
            raise ConfigError(f"{source}: field 'rope_parameters' has entries {unknown} for unknown layer types")
        local = rope.get(SLIDING_ATTENTION) or {}
        if _rope_scaling(local, source, "rope_parameters.sliding_attention") is not None:
            raise ConfigError(f"{source}: field 'rope_parameters.sliding_attention' scales the local RoPE, "
                              "which is not implemented")
        if "rope_theta" in local:
            raw.setdefault("rope_local_base_freq", local["rope_theta"])
        rope = rope.get(FULL_ATTENTION) or {}
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            raw.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default" and not raw.get("rope_scaling"):
            raw["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    types = raw.get("layer_types")
    if isinstance(types, list) and types and all(t == FULL_ATTENTION for t in types):
        del raw["layer_types"]
    return raw


def _layer_types(raw: Mapping[str, Any], family: str, n_layers: int, source: str) -> tuple[int | None, tuple[bool, ...]]:
    """(window, per-layer sliding flags) as transformers derives them for the family."""
    if family == "llama":  # no window (a set one was refused above)
        return None, ()
    if family in ("qwen2", "qwen3"):
        window = raw.get("sliding_window") if raw.get("use_sliding_window", False) else None
    elif family in GEMMA_FAMILIES:
        window = raw.get("sliding_window", _GEMMA_DEFAULTS[family]["sliding_window"])
    else:
        window = raw.get("sliding_window")
    types = raw.get("layer_types")
    if window in (None, 0, False):
        if types:  # transformers itself fails on sliding layers without a window
            raise ConfigError(f"{source}: field 'layer_types' = {types!r} asks for per-layer attention types "
                              "but no sliding window is set")
        return None, ()
    window = int(window)
    if family == "mistral":  # Mistral applies its window on every layer (transformers ignores layer_types)
        if types and any(t != SLIDING_ATTENTION for t in types):
            raise ConfigError(f"{source}: field 'layer_types' = {types!r} on a mistral config; transformers "
                              "runs every Mistral layer with the window, so these types would be ignored")
        return window, (True,) * n_layers
    if types is None:
        if family in ("qwen2", "qwen3"):
            first = int(raw.get("max_window_layers", 28))
            types = [SLIDING_ATTENTION if i >= first else FULL_ATTENTION for i in range(n_layers)]
        else:
            pattern = int(raw.get("sliding_window_pattern", raw.get("_sliding_window_pattern",
                                                                      _GEMMA_DEFAULTS[family]["window_pattern"])))
            types = [SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION for i in range(n_layers)]
    unknown = sorted(set(types) - {FULL_ATTENTION, SLIDING_ATTENTION})
    if unknown:
        raise ConfigError(f"{source}: field 'layer_types' has types {unknown}; only {FULL_ATTENTION!r} and "
                          f"{SLIDING_ATTENTION!r} are implemented")
    if len(types) != n_layers:
        raise ConfigError(f"{source}: field 'layer_types' lists {len(types)} layers; the model has {n_layers}")
    sliding = tuple(t == SLIDING_ATTENTION for t in types)
    return (window, sliding) if any(sliding) else (None, ())


def _optional_float(value: Any) -> float | None:
    return None if value in (None, 0, False) else float(value)


def config_from_hf(raw: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from the dict of an HF `config.json`, rejecting unsupported math.

    Fields a config.json leaves out take the defaults of transformers' config class of that family."""
    raw = _normalise(raw, source)
    model_type = raw.get("model_type")
    if model_type == "gemma3":
        raise ConfigError(f"{source}: field 'model_type' is 'gemma3', the multimodal Gemma 3 wrapper; emojax runs "
                          "the text model alone (a config with model_type 'gemma3_text', as Gemma3ForCausalLM "
                          "checkpoints such as gemma-3-270m and gemma-3-1b ship)")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{source}: field 'model_type' is {model_type!r}; supported model types are "
                          f"{tuple(MODEL_TYPES)}")
    family = MODEL_TYPES[model_type]
    gemma = family in GEMMA_FAMILIES
    defaults = _GEMMA_DEFAULTS.get(family, {})
    for field, what in _REJECT_IF_SET.items():
        if field in _IMPLEMENTED[family]:
            continue
        value = raw.get(field)
        if field == "sliding_window" and not raw.get("use_sliding_window", False):
            continue  # Qwen2 configs carry a window size that is disabled by default.
        if value not in (None, False, 0, [], ()):
            raise ConfigError(f"{source}: field {field!r} = {value!r} asks for {what}, which is not implemented "
                              f"for {family}")
    # Gemma's MLP reads `hidden_activation` (its config class defaults it); the others read `hidden_act`.
    act_field = "hidden_activation" if gemma else "hidden_act"
    act = raw.get(act_field) or defaults.get("hidden_activation", "silu")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"{source}: field {act_field!r} is {act!r}; implemented activations are "
                          f"{sorted(_ACTIVATIONS)}")
    if raw.get("attention_bias", False) and family not in ("llama", "qwen2"):
        raise ConfigError(f"{source}: field 'attention_bias' is true; attention biases are not implemented for "
                          f"{family}")
    if family == "gemma3" and raw.get("attn_logit_softcapping") not in (None, 0):
        raise ConfigError(f"{source}: field 'attn_logit_softcapping' = {raw['attn_logit_softcapping']!r}; "
                          "transformers' Gemma 3 attention does not apply it, so emojax refuses to guess")
    try:
        n_heads = int(raw["num_attention_heads"])
        d_model = int(raw["hidden_size"])
        n_layers = int(raw["num_hidden_layers"])
        window, sliding = _layer_types(raw, family, n_layers, source)
        local_theta = None
        if family == "gemma3" and sliding:
            local_theta = float(raw.get("rope_local_base_freq", defaults["rope_local_base_freq"]))
        cfg = ModelConfig(
            family=family,
            vocab_size=int(raw["vocab_size"]),
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
            head_dim=int(raw.get("head_dim") or defaults.get("head_dim") or d_model // n_heads),
            d_ff=int(raw["intermediate_size"]),
            rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", defaults.get("rope_theta", 10000.0))),
            tie_embeddings=bool(raw.get("tie_word_embeddings", family == "qwen2" or gemma)),
            qkv_bias=family == "qwen2" or bool(raw.get("attention_bias", False)),
            max_position=int(raw.get("max_position_embeddings", 8192)),
            rope_scaling=_rope_scaling(raw.get("rope_scaling"), source),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_as_eos_tuple(raw.get("eos_token_id")),
            name=str(raw.get("_name_or_path", "")),
            norm_offset=1.0 if gemma else 0.0,
            qk_norm=family in ("qwen3", "gemma3"),
            post_norms=gemma,
            activation=_ACTIVATIONS[act],
            query_pre_attn_scalar=(float(raw.get("query_pre_attn_scalar", defaults["query_pre_attn_scalar"]))
                                   if gemma else None),
            attn_softcap=(_optional_float(raw.get("attn_logit_softcapping", defaults["attn_logit_softcapping"]))
                          if gemma else None),
            final_softcap=(_optional_float(raw.get("final_logit_softcapping", defaults["final_logit_softcapping"]))
                           if gemma else None),
            sliding_window=window,
            sliding_layers=sliding,
            rope_local_theta=local_theta,
            embed_scale=float(d_model) ** 0.5 if gemma else None,
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
