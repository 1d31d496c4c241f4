"""Tiny random HF checkpoints on disk (every family emojax runs), written by transformers itself.

    path = make_tiny_checkpoint(tmp_path, family="qwen2", n_kv_heads=2, tie=True)
    path = make_tiny_checkpoint(tmp_path, family="gemma3", n_kv_heads=1, tie=True)   # 6 layers, window 4
    torch_model = load_hf_model(path)          # float32, eval mode, eager attention
    gguf_file = write_gguf(path, tmp_path / "tiny.gguf")   # the same model as llama.cpp would store it

Every weight (norms and biases included) is random, so a wrongly mapped tensor cannot hide behind
an initial value of 0 or 1. Each checkpoint also carries a small byte-level BPE tokenizer with
ChatML special tokens and a chat template, and a generation config whose EOS list adds
`<|endoftext|>` to `<|im_end|>`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from safetensors.numpy import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GenerationConfig, LlamaConfig,
                          MistralConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32}

TINY_DIMS = dict(vocab_size=288, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=96, max_position_embeddings=256, rms_norm_eps=1e-5)
# The newer families: 6 layers, so that Gemma's local and global layers both occur (Gemma 3: five
# sliding, then one full), and a window of 4, which short prompts already cross.
WINDOW = 4
FAMILY_LAYERS = {"qwen3": 6, "mistral": 6, "gemma2": 6, "gemma3": 6}
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3")


def _hf_config(family: str, n_kv_heads: int, tie: bool, rope_scaling: dict | None) -> Any:
    common = dict(TINY_DIMS, num_key_value_heads=n_kv_heads, tie_word_embeddings=tie,
                  bos_token_id=IM_START_ID, eos_token_id=IM_END_ID, pad_token_id=IM_END_ID)
    if family == "llama":
        rope = {"rope_type": "default", "rope_theta": 50000.0}
        if rope_scaling:
            rope = {**rope, **rope_scaling}
        return LlamaConfig(**common, rope_parameters=rope)
    if family == "qwen2":
        if rope_scaling:
            raise ValueError("rope scaling is only exercised on llama checkpoints")
        return Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if rope_scaling:
        raise ValueError("rope scaling is only exercised on llama checkpoints")
    common["num_hidden_layers"] = FAMILY_LAYERS.get(family, common["num_hidden_layers"])
    if family == "qwen3":  # an explicit head width; the window on the layers from max_window_layers on
        return Qwen3Config(**common, head_dim=24, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=3,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if family == "mistral":
        return MistralConfig(**common, sliding_window=WINDOW, rope_parameters={"rope_type": "default",
                                                                                "rope_theta": 1e4})
    # Gemma: small soft-caps (Gemma 2) so that tanh bends a random model's scores and logits, and an
    # attention scale that differs from head_dim^-1/2.
    gemma = dict(common, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=WINDOW)
    if family == "gemma2":
        return Gemma2Config(**gemma, head_dim=16, attn_logit_softcapping=10.0, final_logit_softcapping=5.0,
                            rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    if family == "gemma3":
        return Gemma3TextConfig(**gemma, head_dim=32, rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def _randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    centre = 0.0 if model.config.model_type.startswith("gemma") else 1.0  # Gemma norms are used as (1 + w)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if "norm" in name:
                param.copy_(centre + 0.1 * noise)
            else:
                param.copy_(0.05 * noise)


# A few merges (letters, digit runs, whitespace runs) so BPE and the pre-tokenizer splits both matter.
TINY_MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
               ("1", "2"), ("12", "3"), ("Ġ", "1"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("Ċ", "Ċ"), ("'", "s"), ("Ã", "©"))


def tiny_vocab() -> list[str]:
    """Special tokens (ids 0-2), the 256 byte symbols, then one token per merge."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    return list(SPECIAL_TOKENS) + byte_symbols + ["".join(pair) for pair in TINY_MERGES]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE over `tiny_vocab()` with GPT-2's split and ChatML special tokens."""
    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(TINY_MERGES)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def make_tiny_checkpoint(tmp_path: Path, family: str = "llama", n_kv_heads: int = 2, tie: bool = False,
                         rope_scaling: dict | None = None, sharded: bool = False, seed: int = 0,
                         with_tokenizer: bool = True) -> Path:
    """Write a tiny random checkpoint under `tmp_path` and return its directory.

    `n_kv_heads` < 4 gives grouped-query attention (4 query heads); `rope_scaling` is e.g.
    `LLAMA3_ROPE_SCALING`; `sharded` splits the weights over several files with an index json.
    `family` is one of FAMILIES; the newer ones have 6 layers and a window of 4 (`_hf_config`).
    """
    name = f"{family}-kv{n_kv_heads}-{'tied' if tie else 'untied'}-{'llama3rope' if rope_scaling else 'rope'}"
    path = Path(tmp_path) / f"{name}-{'sharded' if sharded else 'single'}-seed{seed}"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_config(family, n_kv_heads, tie, rope_scaling),
                                             dtype=torch.float32)
    _randomise(model, seed)
    model.generation_config = GenerationConfig(bos_token_id=IM_START_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
                                               pad_token_id=IM_END_ID)
    model.save_pretrained(path, max_shard_size="100KB" if sharded else "50GB")
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(path)
    return path


def load_hf_model(path: str | Path) -> torch.nn.Module:
    """The torch reference model of a checkpoint directory, float32, eval mode, eager attention."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager",
                                                 local_files_only=True)
    return model.eval()


def llama_cpp_permute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's conversion of Llama Q/K rows: per head, interleave the two rotary halves."""
    return rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


_GGUF_BLOCK_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                     "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                     "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                     "mlp.down_proj": "ffn_down"}
_GGUF_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                      "lm_head.weight": "output.weight"}


def _gguf_tensor_name(hf: str) -> str:
    if hf in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[hf]
    _, _, layer, *part, kind = hf.split(".")
    return f"blk.{layer}.{_GGUF_BLOCK_NAMES['.'.join(part)]}.{kind}"


def write_gguf(checkpoint: Path, out: Path, tensor_type: GGMLQuantizationType = GGMLQuantizationType.F32,
               pre: str = "smollm", add_bos: bool = False, extra_tensors: dict[str, np.ndarray] | None = None) -> Path:
    """Store a tiny HF checkpoint as llama.cpp's converter would: GGUF names and metadata, Q/K rows
    permuted for llama, matrices quantised to `tensor_type` (vectors stay F32), the tokenizer as
    `tokenizer.ggml.*` metadata with pre-tokenizer name `pre`."""
    raw = json.loads((checkpoint / "config.json").read_text())
    family, n_heads, n_kv = raw["model_type"], raw["num_attention_heads"], raw["num_key_value_heads"]
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    if raw["tie_word_embeddings"]:
        tensors.pop("lm_head.weight", None)

    writer = GGUFWriter(str(out), arch=family)
    writer.add_name(checkpoint.name)
    writer.add_block_count(raw["num_hidden_layers"])
    writer.add_context_length(raw["max_position_embeddings"])
    writer.add_embedding_length(raw["hidden_size"])
    writer.add_feed_forward_length(raw["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(raw["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(raw["rms_norm_eps"])
    writer.add_rope_dimension_count(raw["hidden_size"] // n_heads)
    writer.add_vocab_size(raw["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    vocab = tiny_vocab()
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in vocab])
    writer.add_token_merges([" ".join(pair) for pair in TINY_MERGES])
    writer.add_bos_token_id(IM_START_ID)
    writer.add_eos_token_id(IM_END_ID)
    writer.add_eot_token_id(ENDOFTEXT_ID)
    writer.add_pad_token_id(IM_END_ID)
    writer.add_unk_token_id(ENDOFTEXT_ID)
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(CHAT_TEMPLATE)

    for hf, value in sorted(tensors.items()):
        value = value.astype(np.float32)
        if family == "llama" and ".q_proj." in hf:
            value = llama_cpp_permute(value, n_heads)
        elif family == "llama" and ".k_proj." in hf:
            value = llama_cpp_permute(value, n_kv)
        if value.ndim == 1 or tensor_type == GGMLQuantizationType.F32:
            writer.add_tensor(_gguf_tensor_name(hf), value)
        else:
            writer.add_tensor(_gguf_tensor_name(hf), quantize(value, tensor_type), raw_dtype=tensor_type)
    for name, value in (extra_tensors or {}).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
