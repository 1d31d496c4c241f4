"""GGUF files: config from the metadata, tensors dequantised to float32 and renamed into the HF namespace.

llama.cpp stores a torch `Linear` weight as rows of `[out, in]` (GGUF lists the shape reversed), so
after dequantisation a tensor has the same layout as the HF tensor it came from, and the family
name maps in `families` apply unchanged. For Llama-family files llama.cpp also interleaved the two
rotary halves of every Q and K head; `unpermute_rotary_rows` undoes that.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from emojax.model.config import ModelConfig, config_from_hf
from emojax.model.params import Params, check_params
from emojax.weights.errors import WeightsError
from emojax.weights.families import FAMILIES, convert

Q = GGMLQuantizationType
# Types whose dequantisation is checked in the tests (by round trip or against a second implementation).
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
                             Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K})

# llama.cpp's tensor names (shared by the llama and qwen2 architectures) -> HF names.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str:
    """The HF name of a GGUF tensor; names without an HF counterpart are returned unchanged."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    return gguf_name


def unpermute_rotary_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: per head it stored the rotary halves interleaved
    (x0, x_h, x1, x_h+1, ...); HF keeps them as two contiguous halves. Works on weights and biases."""
    head_dim = rows.shape[0] // n_heads
    split = rows.reshape(n_heads, head_dim // 2, 2, *rows.shape[1:])
    return split.swapaxes(1, 2).reshape(rows.shape)


class GGUFSource:
    """The tensors of one GGUF file under HF names, dequantised to float32 on demand."""

    def __init__(self, path: Path, reader: GGUFReader, cfg: ModelConfig):
        self._path = path
        self._tensors = {hf_name(t.name): t for t in reader.tensors}
        self._permute_qk = FAMILIES[cfg.family].gguf_permutes_qk
        self._heads = {"q_proj": cfg.n_heads, "k_proj": cfg.n_kv_heads}

    def names(self) -> set[str]:
        return set(self._tensors)

    def location(self, name: str) -> str:
        return str(self._path)

    def get(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        if tensor.tensor_type not in SUPPORTED_TYPES:
            raise WeightsError(
                f"{self._path}: tensor {tensor.name!r} uses quantisation type {tensor.tensor_type.name}, which "
                f"emojax does not dequantise (supported: {sorted(t.name for t in SUPPORTED_TYPES)})")
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        values = values.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        projection = name.split(".")[-2]
        if self._permute_qk and projection in self._heads:
            values = unpermute_rotary_rows(values, self._heads[projection])
        return values


def open_gguf(path: str | Path) -> GGUFReader:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such GGUF file")
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as err:
        raise WeightsError(f"{path}: not a readable GGUF file ({err})") from None


def metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every scalar/string/array metadata field as a Python value."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def _eos_ids(meta: dict[str, Any]) -> list[int]:
    """End of sequence plus end of turn / end of message, when the file names them."""
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is not None and int(token_id) not in ids:
            ids.append(int(token_id))
    return ids


def gguf_config_dict(meta: dict[str, Any], tensor_names: set[str], path: Path) -> dict[str, Any]:
    """The metadata expressed as an HF config dict, so the HF parser validates it the same way.
    `tensor_names` are the file's tensor names in the HF namespace (see `hf_name`)."""
    arch = meta.get("general.architecture")
    if arch not in FAMILIES:
        raise WeightsError(f"{path}: architecture {arch!r} is not supported; supported: {sorted(FAMILIES)}")

    def field(key: str, default: Any = None, required: bool = True) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None and required:
            raise WeightsError(f"{path}: metadata field '{arch}.{key}' is missing")
        return value

    n_heads = int(field("attention.head_count"))
    n_kv_heads = field("attention.head_count_kv", n_heads)
    if isinstance(n_kv_heads, list):
        raise WeightsError(f"{path}: '{arch}.attention.head_count_kv' varies per layer, which is not implemented")
    d_model = int(field("embedding_length"))
    head_dim = int(field("attention.key_length", d_model // n_heads))
    if int(field("attention.value_length", head_dim)) != head_dim:
        raise WeightsError(f"{path}: key and value head widths differ, which is not implemented")
    if int(field("rope.dimension_count", head_dim)) != head_dim:
        raise WeightsError(f"{path}: '{arch}.rope.dimension_count' asks for partial rotary embeddings, "
                           "which are not implemented")
    raw: dict[str, Any] = {
        "model_type": arch,
        "vocab_size": int(field("vocab_size", len(meta.get("tokenizer.ggml.tokens") or []) or None)),
        "hidden_size": d_model,
        "num_hidden_layers": int(field("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(n_kv_heads),
        "head_dim": head_dim,
        "intermediate_size": int(field("feed_forward_length")),
        "rms_norm_eps": float(field("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(field("context_length", 8192)),
        "tie_word_embeddings": "lm_head.weight" not in tensor_names,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": _eos_ids(meta),
        "_name_or_path": meta.get("general.name", path.stem),
    }
    if "rope_freqs.weight" in tensor_names:
        raise WeightsError(f"{path}: stores per-frequency rope factors (rope_freqs.weight, llama3 scaling); "
                           "reading them from GGUF is not implemented, load the HF checkpoint instead")
    scaling = field("rope.scaling.type", "none", required=False)
    if scaling != "none":
        raw["rope_scaling"] = {"type": scaling}  # rejected by the parser with the field named
    window = field("attention.sliding_window", None, required=False)
    if window:
        raw.update(sliding_window=window, use_sliding_window=True)
    return raw


def tensor_names(reader: GGUFReader) -> set[str]:
    return {hf_name(t.name) for t in reader.tensors}


def gguf_config(reader: GGUFReader, path: Path) -> ModelConfig:
    return config_from_hf(gguf_config_dict(metadata(reader), tensor_names(reader), path), source=str(path))


def load_gguf(path: str | Path, reader: GGUFReader | None = None) -> tuple[Params, ModelConfig]:
    """Float32 params (numpy) and config of a GGUF file."""
    path = Path(path)
    reader = reader or open_gguf(path)
    cfg = gguf_config(reader, path)
    params = convert(cfg, GGUFSource(path, reader, cfg), what=str(path))
    check_params(params, cfg, source=str(path))
    return params, cfg
