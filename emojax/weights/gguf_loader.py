"""GGUF files: config from the metadata, tensors dequantised to float32 and renamed into the HF namespace.

llama.cpp stores a torch `Linear` weight as rows of `[out, in]` (GGUF lists the shape reversed), so
after dequantisation a tensor has the same layout as the HF tensor it came from, and the family
name maps in `families` apply unchanged. What else llama.cpp changed on the way in depends on the
architecture, and is undone here per architecture (`GGUF_ARCHITECTURES`):
- tensor names (`blk.N.ffn_norm` is Llama's post-attention norm but Gemma's pre-feedforward norm);
- for Llama-family files, the two rotary halves of every Q and K head were interleaved
  (`unpermute_rotary_rows` undoes that); Qwen2 and Gemma 3 files keep HF's order;
- Gemma's RMS norms compute `x * (1 + w)` and HF stores `w`; llama.cpp stored `1 + w` (q/k norms
  included), so 1 is subtracted again, in float32, as transformers does when it reads the file.

`read_gguf` gives a file's tensors in the HF namespace and conventions together with its HF config
dict, without parsing that dict into a `ModelConfig`: what the file holds can be checked against
transformers on its own. `load_gguf` parses the config and converts to emojax's layout.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from emojax.model.config import ModelConfig, config_from_hf
from emojax.model.params import Params, check_params
from emojax.weights.errors import WeightsError
from emojax.weights.families import convert

Q = GGMLQuantizationType
# Types whose dequantisation is checked in the tests (by round trip or against a second implementation).
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
                             Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K})

# llama.cpp's names of the tensors outside the blocks (every architecture here) -> HF names.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# llama.cpp's block tensor names shared by the llama, qwen2 and gemma3 architectures -> HF names.
_SHARED_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

ConfigFields = Callable[[Mapping[str, Any], Callable[..., Any], Path], dict[str, Any]]


def _window_fields(meta: Mapping[str, Any], field: Callable[..., Any], path: Path) -> dict[str, Any]:
    """Llama and Qwen2: a sliding window only where the file states one (the parser refuses it)."""
    window = field("attention.sliding_window", None, required=False)
    return dict(sliding_window=window, use_sliding_window=True) if window else {}


@dataclasses.dataclass(frozen=True)
class GGUFArchitecture:
    """How llama.cpp stored one architecture (`general.architecture`), and how to undo it."""

    name: str
    model_type: str                     # the HF `model_type` of the config dict
    block_names: Mapping[str, str]      # block tensor part (`ffn_norm`) -> HF name under model.layers.{i}.
    permutes_qk: bool                   # Q/K rows stored with the rotary halves interleaved
    norm_offset: float = 0.0            # subtracted from every norm weight (Gemma: the 1 of `1 + w`)
    norm_parts: frozenset[str] = frozenset()  # the block parts that are norm weights
    config_fields: ConfigFields = _window_fields  # architecture-specific HF config fields
    end_of_turn_tokens: tuple[str, ...] = ()  # tokens that end a turn: added to the stop ids

    def hf_name(self, gguf_name: str) -> str:
        """The HF name of a GGUF tensor; names without an HF counterpart are returned unchanged."""
        if gguf_name in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[gguf_name]
        match = _BLOCK_TENSOR.fullmatch(gguf_name)
        if match and match.group(2) in self.block_names:
            layer, part, kind = match.groups()
            return f"model.layers.{layer}.{self.block_names[part]}.{kind}"
        return gguf_name

    def is_norm(self, gguf_name: str) -> bool:
        if gguf_name == "output_norm.weight":
            return True
        match = _BLOCK_TENSOR.fullmatch(gguf_name)
        return bool(match) and match.group(2) in self.norm_parts and match.group(3) == "weight"


_LLAMA_BLOCK_NAMES = {**_SHARED_BLOCK_NAMES, "ffn_norm": "post_attention_layernorm"}

# transformers' Gemma3TextConfig defaults for what llama.cpp hard-codes for `gemma3` instead of storing
# it (llama.cpp: swa pattern 6, local rope base 1e4, attention scale 1/sqrt(head_dim)); google/gemma-3-270m's
# config.json states the same values.
GEMMA3_SLIDING_WINDOW_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0
GEMMA3_ACTIVATION = "gelu_pytorch_tanh"


def gemma3_layer_types(n_layers: int, pattern: Any = GEMMA3_SLIDING_WINDOW_PATTERN) -> list[str]:
    """Sliding-window attention on every layer but every `pattern`-th (as Gemma3TextConfig builds it),
    or per layer where `pattern` is a list of booleans (true: sliding)."""
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != n_layers:
            raise ValueError(f"a per-layer sliding-window pattern of {len(pattern)} entries for {n_layers} layers")
        return ["sliding_attention" if bool(s) else "full_attention" for s in pattern]
    pattern = int(pattern)
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]


def _gemma3_fields(meta: Mapping[str, Any], field: Callable[..., Any], path: Path) -> dict[str, Any]:
    """The fields of transformers' Gemma3TextConfig that change the math, each from the file's metadata
    where it has them (window, global rope base, head_dim), else from Gemma3TextConfig's defaults."""
    n_layers = int(field("block_count"))
    head_dim = int(field("attention.key_length"))
    d_model, n_heads = int(field("embedding_length")), int(field("attention.head_count"))
    window = field("attention.sliding_window")
    pattern = field("attention.sliding_window_pattern", GEMMA3_SLIDING_WINDOW_PATTERN, required=False)
    try:
        layer_types = gemma3_layer_types(n_layers, pattern)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: 'gemma3.attention.sliding_window_pattern' = {pattern!r} is not usable ({err})"
                           ) from None
    global_base = float(field("rope.freq_base", 1_000_000.0, required=False))
    local_base = float(field("rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE, required=False))
    full_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": global_base}
    extra: dict[str, Any] = {}
    scaling = field("rope.scaling.type", "none", required=False)
    if scaling != "none":  # the larger Gemma 3 scale the global layers' positions (transformers: full_attention)
        factor = field("rope.scaling.factor", None, required=False)
        full_rope = {**full_rope, "rope_type": scaling, **({"factor": float(factor)} if factor else {})}
        extra["rope_scaling"] = {k: v for k, v in full_rope.items() if k != "rope_theta"}
    return {
        **extra,
        "sliding_window": int(window),
        "layer_types": layer_types,
        "rope_theta": global_base,
        "rope_local_base_freq": local_base,
        # transformers 5's spelling of the two bases, keyed by layer type.
        "rope_parameters": {"full_attention": full_rope,
                            "sliding_attention": {"rope_type": "default", "rope_theta": local_base}},
        # Gemma3TextConfig's default is 256 (this file's head_dim). llama.cpp scales scores by
        # 1/sqrt(head_dim), except for the 27B model (62 layers): 1/sqrt(d_model / n_heads).
        "query_pre_attn_scalar": d_model // n_heads if n_layers == 62 else head_dim,
        "hidden_activation": GEMMA3_ACTIVATION,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


_GEMMA3_NORMS = frozenset({"attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm",
                           "post_ffw_norm"})

GGUF_ARCHITECTURES: dict[str, GGUFArchitecture] = {a.name: a for a in (
    GGUFArchitecture("llama", "llama", _LLAMA_BLOCK_NAMES, permutes_qk=True),
    GGUFArchitecture("qwen2", "qwen2", _LLAMA_BLOCK_NAMES, permutes_qk=False),
    GGUFArchitecture(
        "gemma3", "gemma3_text",
        {**_SHARED_BLOCK_NAMES,
         "attn_q_norm": "self_attn.q_norm",
         "attn_k_norm": "self_attn.k_norm",
         "post_attention_norm": "post_attention_layernorm",
         "ffn_norm": "pre_feedforward_layernorm",
         "post_ffw_norm": "post_feedforward_layernorm"},
        permutes_qk=False, norm_offset=1.0, norm_parts=_GEMMA3_NORMS, config_fields=_gemma3_fields,
        end_of_turn_tokens=("<end_of_turn>",)),
)}


def architecture_of(meta: Mapping[str, Any], path: Path) -> GGUFArchitecture:
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise WeightsError(f"{path}: architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}")
    return GGUF_ARCHITECTURES[arch]


def hf_name(gguf_name: str, arch: str = "llama") -> str:
    """The HF name of a GGUF tensor of architecture `arch`; names without an HF counterpart are returned
    unchanged."""
    return GGUF_ARCHITECTURES[arch].hf_name(gguf_name)


def unpermute_rotary_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: per head it stored the rotary halves interleaved
    (x0, x_h, x1, x_h+1, ...); HF keeps them as two contiguous halves. Works on weights and biases."""
    head_dim = rows.shape[0] // n_heads
    split = rows.reshape(n_heads, head_dim // 2, 2, *rows.shape[1:])
    return split.swapaxes(1, 2).reshape(rows.shape)


@dataclasses.dataclass(frozen=True)
class _Conventions:
    """What `GGUFSource.get` undoes: the rotary permutation (with the head counts it needs) and the
    norm offset."""

    permute_heads: Mapping[str, int]  # HF projection name -> its head count; empty: no permutation
    norm_offset: float
    norms: frozenset[str]             # HF names of the norm weights


class GGUFSource:
    """The tensors of one GGUF file under HF names and in HF's conventions, dequantised to float32 on
    demand. `arch` and the head counts come from the file's metadata (see `read_gguf`); without them
    the tensors are only renamed and dequantised (used for single-tensor test files)."""

    def __init__(self, path: Path, reader: GGUFReader, arch: GGUFArchitecture | None = None,
                 n_heads: int | None = None, n_kv_heads: int | None = None):
        self._path = path
        arch = arch or GGUF_ARCHITECTURES["llama"]
        self._tensors = {arch.hf_name(t.name): t for t in reader.tensors}
        permute = dict(q_proj=n_heads, k_proj=n_kv_heads) if arch.permutes_qk and n_heads else {}
        self._conventions = _Conventions(
            permute, arch.norm_offset,
            frozenset(arch.hf_name(t.name) for t in reader.tensors if arch.is_norm(t.name)))

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
        conventions = self._conventions
        projection = name.split(".")[-2]
        if projection in conventions.permute_heads:
            values = unpermute_rotary_rows(values, conventions.permute_heads[projection])
        if conventions.norm_offset and name in conventions.norms:
            values = values - np.float32(conventions.norm_offset)
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


def _eos_ids(meta: Mapping[str, Any], end_of_turn_tokens: tuple[str, ...] = ()) -> list[int]:
    """End of sequence plus end of turn / end of message, when the file names them, then the ids of the
    architecture's end-of-turn tokens (Gemma's `<end_of_turn>`, which the file does not name)."""
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is not None and int(token_id) not in ids:
            ids.append(int(token_id))
    if end_of_turn_tokens:
        tokens = meta.get("tokenizer.ggml.tokens") or []
        wanted = set(end_of_turn_tokens)
        for token_id, token in enumerate(tokens):
            if token in wanted and token_id not in ids:
                ids.append(token_id)
    return ids


def gguf_config_dict(meta: Mapping[str, Any], tensor_names: set[str], path: Path) -> dict[str, Any]:
    """The metadata expressed as an HF config dict, so the HF parser validates it the same way.
    `tensor_names` are the file's tensor names in the HF namespace (see `tensor_names`)."""
    architecture = architecture_of(meta, path)
    arch = architecture.name

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
        "model_type": architecture.model_type,
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
        "eos_token_id": _eos_ids(meta, architecture.end_of_turn_tokens),
        "_name_or_path": meta.get("general.name", path.stem),
    }
    if "rope_freqs.weight" in tensor_names:
        raise WeightsError(f"{path}: stores per-frequency rope factors (rope_freqs.weight, llama3 scaling); "
                           "reading them from GGUF is not implemented, load the HF checkpoint instead")
    scaling = field("rope.scaling.type", "none", required=False)
    if scaling != "none":
        raw["rope_scaling"] = {"type": scaling}  # rejected by the parser with the field named
    raw.update(architecture.config_fields(meta, field, path))
    return raw


def tensor_names(reader: GGUFReader, meta: Mapping[str, Any] | None = None) -> set[str]:
    """The file's tensor names in the HF namespace of its architecture."""
    meta = metadata(reader) if meta is None else meta
    arch = GGUF_ARCHITECTURES.get(meta.get("general.architecture"), GGUF_ARCHITECTURES["llama"])
    return {arch.hf_name(t.name) for t in reader.tensors}


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
    """A GGUF file as an HF checkpoint: its tensors under HF names in HF's conventions (read lazily,
    float32) and its HF config dict, together with the metadata they came from."""

    path: Path
    tensors: GGUFSource
    config: dict[str, Any]
    metadata: dict[str, Any]


def read_gguf(path: str | Path, reader: GGUFReader | None = None,
              meta: dict[str, Any] | None = None) -> GGUFCheckpoint:
    """The HF-namespace tensors and HF config dict of a GGUF file, without a ModelConfig."""
    path = Path(path)
    reader = reader or open_gguf(path)
    meta = metadata(reader) if meta is None else meta
    raw = gguf_config_dict(meta, tensor_names(reader, meta), path)
    source = GGUFSource(path, reader, GGUF_ARCHITECTURES[meta["general.architecture"]],
                        n_heads=raw["num_attention_heads"], n_kv_heads=raw["num_key_value_heads"])
    return GGUFCheckpoint(path, source, raw, meta)


def gguf_config(reader: GGUFReader, path: Path) -> ModelConfig:
    meta = metadata(reader)
    return config_from_hf(gguf_config_dict(meta, tensor_names(reader, meta), path), source=str(path))


def convert_gguf(checkpoint: GGUFCheckpoint) -> tuple[Params, ModelConfig]:
    """Float32 params (numpy) and config of a GGUF file read by `read_gguf`."""
    path = checkpoint.path
    cfg = config_from_hf(checkpoint.config, source=str(path))
    params = convert(cfg, checkpoint.tensors, what=str(path))
    check_params(params, cfg, source=str(path))
    return params, cfg


def load_gguf(path: str | Path, reader: GGUFReader | None = None) -> tuple[Params, ModelConfig]:
    """Float32 params (numpy) and config of a GGUF file."""
    return convert_gguf(read_gguf(path, reader))
