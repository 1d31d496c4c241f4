"""Checkpoint reading: HF safetensors directories and GGUF files into the emojax parameter layout."""
from emojax.weights.errors import WeightsError
from emojax.weights.families import FAMILIES, Family, TensorRule
from emojax.weights.gguf_loader import GGUF_ARCHITECTURES
from emojax.weights.gguf_loader import SUPPORTED_TYPES as SUPPORTED_GGUF_TYPES
from emojax.weights.gguf_loader import load_gguf, read_gguf
from emojax.weights.gguf_tokenizer import tokenizer_from_gguf_metadata
from emojax.weights.safetensors_loader import hf_config, load_hf_checkpoint

__all__ = ["FAMILIES", "Family", "GGUF_ARCHITECTURES", "SUPPORTED_GGUF_TYPES", "TensorRule", "WeightsError", "hf_config",
           "load_gguf", "load_hf_checkpoint", "read_gguf", "tokenizer_from_gguf_metadata"]
