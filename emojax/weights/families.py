"""Per-family maps from checkpoint tensor names to the stacked parameter layout of `emojax.model.params`.

Each family is a table of rules, one per parameter: which HF tensor feeds it, whether the torch
`Linear` weight must be transposed to input-major, and when the parameter exists. Per-layer tensors
(`{layer}` in the name) are stacked on a leading layer axis. GGUF files are first renamed into the HF
namespace (see `gguf_loader`), so one table serves both formats.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Protocol

import numpy as np

from emojax.model.config import ModelConfig
from emojax.model.params import Params, param_shapes
from emojax.weights.errors import WeightsError


class TensorSource(Protocol):
    """Named tensors from checkpoint files, read lazily."""

    def names(self) -> set[str]: ...

    def get(self, name: str) -> np.ndarray: ...

    def location(self, name: str) -> str:
        """The file a tensor comes from, for error messages."""
        ...


def _always(cfg: ModelConfig) -> bool:
    return True


def _untied(cfg: ModelConfig) -> bool:
    return not cfg.tie_embeddings


def _has_qkv_bias(cfg: ModelConfig) -> bool:
    return cfg.qkv_bias


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One parameter: `target` is its path in the pytree ("layers.wq"), `source` the HF tensor name."""

    target: str
    source: str
    transpose: bool = False
    when: Callable[[ModelConfig], bool] = _always

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.source


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    rules: tuple[TensorRule, ...]
    # Tensors a checkpoint may carry that hold nothing emojax needs (e.g. cached rotary tables).
    ignorable: tuple[str, ...] = ()


_LAYER = "model.layers.{layer}."

_EMBEDDINGS_AND_HEAD = (
    TensorRule("embed", "model.embed_tokens.weight"),
    TensorRule("final_norm", "model.norm.weight"),
    TensorRule("lm_head", "lm_head.weight", transpose=True, when=_untied),
)
_PROJECTIONS = (
    TensorRule("layers.wq", _LAYER + "self_attn.q_proj.weight", transpose=True),
    TensorRule("layers.wk", _LAYER + "self_attn.k_proj.weight", transpose=True),
    TensorRule("layers.wv", _LAYER + "self_attn.v_proj.weight", transpose=True),
    TensorRule("layers.wo", _LAYER + "self_attn.o_proj.weight", transpose=True),
    TensorRule("layers.w_gate", _LAYER + "mlp.gate_proj.weight", transpose=True),
    TensorRule("layers.w_up", _LAYER + "mlp.up_proj.weight", transpose=True),
    TensorRule("layers.w_down", _LAYER + "mlp.down_proj.weight", transpose=True),
)
# Llama's two norms: before attention, and before the MLP (which HF calls post_attention_layernorm).
_LLAMA_NORMS = (
    TensorRule("layers.attn_norm", _LAYER + "input_layernorm.weight"),
    TensorRule("layers.mlp_norm", _LAYER + "post_attention_layernorm.weight"),
)
# Gemma 2/3's four: HF's post_attention_layernorm is the norm of the attention *output*; the MLP's input
# norm is pre_feedforward_layernorm. Stored as w, used as (1 + w) (config.norm_offset).
_GEMMA_NORMS = (
    TensorRule("layers.attn_norm", _LAYER + "input_layernorm.weight"),
    TensorRule("layers.attn_post_norm", _LAYER + "post_attention_layernorm.weight"),
    TensorRule("layers.mlp_norm", _LAYER + "pre_feedforward_layernorm.weight"),
    TensorRule("layers.mlp_post_norm", _LAYER + "post_feedforward_layernorm.weight"),
)
_QK_NORMS = (
    TensorRule("layers.q_norm", _LAYER + "self_attn.q_norm.weight"),
    TensorRule("layers.k_norm", _LAYER + "self_attn.k_norm.weight"),
)
_DECODER_RULES = _EMBEDDINGS_AND_HEAD + _LLAMA_NORMS + _PROJECTIONS
_QKV_BIAS_RULES = (
    TensorRule("layers.bq", _LAYER + "self_attn.q_proj.bias", when=_has_qkv_bias),
    TensorRule("layers.bk", _LAYER + "self_attn.k_proj.bias", when=_has_qkv_bias),
    TensorRule("layers.bv", _LAYER + "self_attn.v_proj.bias", when=_has_qkv_bias),
)
_ROTARY_CACHE = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"

# Llama and SmolLM2: no biases unless the config sets `attention_bias`; embeddings tied or not.
LLAMA = Family("llama", _DECODER_RULES + _QKV_BIAS_RULES, ignorable=(_ROTARY_CACHE,))
# Qwen2: always q/k/v biases (the config sets qkv_bias for this family).
QWEN2 = Family("qwen2", _DECODER_RULES + _QKV_BIAS_RULES, ignorable=(_ROTARY_CACHE,))
# Qwen3: Llama's layout plus q/k norms, no biases; head_dim is explicit in the config.
QWEN3 = Family("qwen3", _DECODER_RULES + _QK_NORMS, ignorable=(_ROTARY_CACHE,))
# Mistral: Llama's layout (the window is config only); llama.cpp converts it as a Llama model.
MISTRAL = Family("mistral", _DECODER_RULES, ignorable=(_ROTARY_CACHE,))
# Gemma 2: four norms per layer, tied embeddings (softcaps, window and scale are config only).
GEMMA2 = Family("gemma2", _EMBEDDINGS_AND_HEAD + _GEMMA_NORMS + _PROJECTIONS)
# Gemma 3 (text): Gemma 2's layout plus q/k norms.
GEMMA3 = Family("gemma3", _EMBEDDINGS_AND_HEAD + _GEMMA_NORMS + _QK_NORMS + _PROJECTIONS)

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAMA, QWEN2, QWEN3, MISTRAL, GEMMA2, GEMMA3)}


def family_of(cfg: ModelConfig) -> Family:
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise WeightsError(f"no weight map for model family {cfg.family!r}; known: {sorted(FAMILIES)}") from None


def _set_path(tree: dict, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _get_path(tree: dict, path: str):
    for key in path.split("."):
        tree = tree[key]
    return tree


def _read(source: TensorSource, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = source.get(name)
    if tuple(array.shape) != shape:
        raise WeightsError(f"{source.location(name)}: tensor {name!r} has shape {tuple(array.shape)}, "
                           f"expected {shape} from the config")
    return array


def convert(cfg: ModelConfig, source: TensorSource, what: str) -> Params:
    """Read every parameter `cfg` needs from `source` into the stacked, input-major layout.

    `what` names the checkpoint in error messages. Arrays keep the checkpoint's dtype.
    """
    family = family_of(cfg)
    shapes = param_shapes(cfg)
    available = source.names()
    rules = [r for r in family.rules if r.when(cfg)]

    def names_of(rule: TensorRule) -> list[str]:
        if rule.per_layer:
            return [rule.source.format(layer=i) for i in range(cfg.n_layers)]
        return [rule.source]

    wanted = {name for rule in rules for name in names_of(rule)}
    missing = sorted(wanted - available)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise WeightsError(f"{what}: missing tensors {shown}")
    # Some tied checkpoints still store the (identical) head.
    skipped = {"lm_head.weight"} if cfg.tie_embeddings else set()
    ignorable = re.compile("|".join(family.ignorable)) if family.ignorable else None
    unexpected = sorted(n for n in available - wanted - skipped if not (ignorable and ignorable.fullmatch(n)))
    if unexpected:
        raise WeightsError(f"{what}: unexpected tensors {unexpected[:8]} for a {cfg.family} model with this "
                           "config; they would change the computation, which emojax does not implement")

    params: Params = {}
    for rule in rules:
        target_shape = _get_path(shapes, rule.target)
        item_shape = tuple(target_shape[1:] if rule.per_layer else target_shape)
        stored_shape = item_shape[::-1] if rule.transpose else item_shape
        arrays = [_read(source, name, stored_shape) for name in names_of(rule)]
        if rule.transpose:
            arrays = [a.T for a in arrays]
        value = np.stack(arrays) if rule.per_layer else np.ascontiguousarray(arrays[0])
        _set_path(params, rule.target, value)
    return params
