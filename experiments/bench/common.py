"""What every benchmark shares: the model under test, median timing, the machine's matmul peak,
peak memory, FLOP counts, and the same weights as an HF PyTorch model for the baseline.

A benchmark is a function `fn(ctx: BenchContext) -> dict` returning at least `emojax_s`,
`baseline_s` and `speedup` (baseline time / emojax time; None where no baseline ran).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import platform
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig, config_from_hf
from emojax.model.params import param_shapes

_LLAMA32_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}
_LLAMA31_SCALING = {**_LLAMA32_SCALING, "factor": 8.0}


def _shape(model_type: str, vocab: int, d: int, layers: int, heads: int, kv: int, ff: int, tie: bool,
           theta: float, eps: float, **extra: Any) -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": vocab, "hidden_size": d, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": ff,
            "tie_word_embeddings": tie, "rope_theta": theta, "rms_norm_eps": eps, "max_position_embeddings": 32768,
            **extra}


# Published config.json shapes, for runs with random weights (`--random_config`).
CONFIG_SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": _shape("llama", 49152, 576, 30, 9, 3, 1536, True, 100000.0, 1e-5),
    "smollm2-360m": _shape("llama", 49152, 960, 32, 15, 5, 2560, True, 100000.0, 1e-5),
    "smollm2-1.7b": _shape("llama", 49152, 2048, 24, 32, 32, 8192, True, 130000.0, 1e-5),
    "llama-3.2-1b": _shape("llama", 128256, 2048, 16, 32, 8, 8192, True, 500000.0, 1e-5,
                           head_dim=64, rope_scaling=_LLAMA32_SCALING),
    "llama-3.2-3b": _shape("llama", 128256, 3072, 28, 24, 8, 8192, True, 500000.0, 1e-5,
                           head_dim=128, rope_scaling=_LLAMA32_SCALING),
    "llama-3.1-8b": _shape("llama", 128256, 4096, 32, 32, 8, 14336, False, 500000.0, 1e-5,
                           head_dim=128, rope_scaling=_LLAMA31_SCALING),
    "qwen2.5-0.5b": _shape("qwen2", 151936, 896, 24, 14, 2, 4864, True, 1000000.0, 1e-6),
    "qwen2.5-1.5b": _shape("qwen2", 151936, 1536, 28, 12, 2, 8960, True, 1000000.0, 1e-6),
    "qwen2.5-3b": _shape("qwen2", 151936, 2048, 36, 16, 2, 11008, True, 1000000.0, 1e-6),
    "qwen2.5-7b": _shape("qwen2", 152064, 3584, 28, 28, 4, 18944, False, 1000000.0, 1e-6),
    # Not a published model: the smallest shape with every feature above (GQA, qkv bias, an untied
    # head), for tests of the launchers that run at a named shape.
    "tiny": _shape("qwen2", 256, 64, 3, 4, 2, 96, False, 10000.0, 1e-6),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def host_random_params(config: ModelConfig, dtype: Any, seed: int = 0, scale: float = 0.05) -> dict[str, Any]:
    """Random weights of `config`'s shapes with `random_params`' distribution (norm gains 1 + 0.1 N,
    the rest `scale` N), drawn on the host one layer slice at a time and then placed on the device:
    JAX's generator holds about 9x an array in temporaries, which at the 3B and 7B shapes is more than
    a 24 GiB host has for their largest stacked weight."""
    rng = np.random.default_rng(seed)
    target = np.dtype(dtype)

    def draw(path: str, shape: tuple[int, ...]) -> jax.Array:
        out = np.empty(shape, target)
        for part in (range(shape[0]) if len(shape) == 3 else [slice(None)]):
            noise = rng.standard_normal(out[part].shape, dtype=np.float32)
            out[part] = (1.0 + 0.1 * noise) if "norm" in path else scale * noise
        return jnp.asarray(out)

    shapes = param_shapes(config)
    return jax.tree_util.tree_map_with_path(lambda path, shape: draw(jax.tree_util.keystr(path), shape), shapes,
                                            is_leaf=lambda x: isinstance(x, tuple))


def shape_config(name: str) -> ModelConfig:
    if name not in CONFIG_SHAPES:
        raise ValueError(f"--random_config={name!r}: unknown shape; known: {sorted(CONFIG_SHAPES)}")
    return config_from_hf(CONFIG_SHAPES[name], source=f"config shape {name}").replace(name=name)


# --- timing and machine figures -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    first_s: float  # the untimed warm-up call (includes compilation for jitted code)
    runs_s: tuple[float, ...]


def time_call(fn: Callable[[], Any], repeats: int) -> Timing:
    """Median wall time of `fn()` over `repeats` runs after one warm-up run; JAX results are waited for."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return Timing(statistics.median(runs), min(runs), first, tuple(runs))


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """Like `time_call` for several functions, run in turns (a, b, a, b, ...) so that a change in
    machine load during the measurement reaches all of them alike."""
    first, runs = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            runs[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(r), min(r), first[name], tuple(r)) for name, r in runs.items()}


def pct_of_peak(flop: float, seconds: float, peak_gflops: float) -> float:
    """Percent of the matmul peak that `flop` FLOPs in `seconds` reach."""
    return 100 * flop / seconds / 1e9 / peak_gflops


def measure_matmul_peak(n: int = 2048, repeats: int = 7, dtype: Any = jnp.float32) -> float:
    """GFLOP/s of an n x n matmul in `dtype` in JAX on the default device (median of `repeats`)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    return 2 * n ** 3 / time_call(lambda: matmul(a, b), repeats).median_s / 1e9


_peak_before_resets_mb = 0.0  # `rss_during` resets the kernel's peak; the highest one seen before is kept


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _peak_before_resets_mb)


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024  # kB


def rss_during(fn: Callable[[], Any]) -> tuple[Any, dict[str, float | None]]:
    """fn()'s result, and the process's resident memory before it and at its peak while it ran
    (Linux: the peak is reset through /proc/self/clear_refs first; None where that is not possible)."""
    global _peak_before_resets_mb
    before = _status_mb("VmRSS")
    _peak_before_resets_mb = peak_rss_mb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident size to the current one
        reset = True
    except OSError:
        reset = False
    out = fn()
    return out, {"rss_before_mb": before, "peak_rss_mb": _status_mb("VmHWM") if reset else None}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "jax_device": f"{device.platform}:{device.device_kind}",
            "n_devices": jax.device_count(), "jax": jax.__version__}


def load_average() -> float:
    """The 1-minute load average: above the core count, other processes shared the CPU."""
    return os.getloadavg()[0]


# --- FLOP counting --------------------------------------------------------------------------------

def forward_flops(config: ModelConfig, batch: int, seq: int, logits: str = "all", context: int | None = None) -> int:
    """FLOPs of one forward: 2 x (weight-matmul multiply-adds) + the attention score and value
    products over the full [seq, context] score matrix (computed densely, masked afterwards).
    `context` defaults to `seq` (a prefill without cache)."""
    c = config
    context = seq if context is None else context
    per_token = c.n_layers * c.d_model * (2 * c.q_dim + 2 * c.kv_dim + 3 * c.d_ff)
    head_tokens = {"all": batch * seq, "last": batch, "none": 0}[logits]
    matmul = 2 * (batch * seq * per_token + head_tokens * c.d_model * c.vocab_size)
    attention = 2 * 2 * batch * c.n_layers * c.n_heads * c.head_dim * seq * context
    return matmul + attention


# --- the model under test and its PyTorch twin ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchSizes:
    """Workload sizes a run may shrink (for a quick check); None keeps each benchmark's own default."""

    scan_prompts: int | None = None  # prompts of head_scan, sublayer_scan and neuron_scan
    neuron_layers: tuple[int, ...] | None = None  # layers emojax's neuron scan runs (extrapolated to all)
    peer_sample: int = 16  # scan variants each peer runs (at least one chunk), scaled to the full scan
    peer_batch_rows: int = 768  # batch rows of a batched full-forward peer (variants x prompts)
    prefix_batch_rows: int = 4096  # batch rows of a one-token suffix pass (variants x prompts)
    generate_batch: int | None = None  # prompts of generate and generate_steered
    generate_tokens: int | None = None  # new tokens of generate and generate_steered


@dataclasses.dataclass
class BenchContext:
    """The model every benchmark of one invocation uses, and shared lazily computed figures."""

    name: str
    config: ModelConfig
    params: Any
    tokenizer: Any | None
    dtype: Any
    repeats: int
    baseline: bool  # run the HF PyTorch baseline
    baseline_device: str = "cpu"  # torch device of the baseline
    peers: tuple[str, ...] = ("hf_hooks",)  # the baselines run beside emojax (experiments/bench/peers.py)
    sizes: BenchSizes = BenchSizes()
    _shared: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def shared(self, key: str, build: Callable[[], Any]) -> Any:
        """`build()` once per context under `key` (a peer's own copy of the weights)."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    @functools.cached_property
    def matmul_peak_gflops(self) -> float:
        return measure_matmul_peak()

    @functools.cached_property
    def torch_model(self) -> Any:
        """The same weights as an HF PyTorch causal LM (SDPA attention, eval mode) on `baseline_device`."""
        return torch_model_from_params(self.params, self.config).to(self.baseline_device)

    def torch_call(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """`fn` made to return only once the device has finished (CUDA runs asynchronously)."""
        if self.baseline_device == "cpu":
            return fn
        import torch

        def synchronized() -> Any:
            out = fn()
            torch.cuda.synchronize()
            return out
        return synchronized

    def tokens(self, batch: int, seq: int, seed: int = 0) -> np.ndarray:
        """Random token ids (timing does not depend on the text)."""
        return np.random.default_rng(seed).integers(0, self.config.vocab_size, (batch, seq), dtype=np.int32)


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The HF config fields that reproduce `config` (the inverse of `config_from_hf`)."""
    raw: dict[str, Any] = {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "intermediate_size": config.d_ff, "rms_norm_eps": config.rms_eps,
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_position,
    }
    if config.rope_scaling is not None:
        scaling = dict(config.rope_scaling)
        scaling["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
        raw["rope_scaling"] = {"rope_type": "llama3", **scaling}
    if config.family == "llama":
        raw["attention_bias"] = config.qkv_bias
    return raw


def torch_runtime(attention: str, call: str = "", device: str | None = None) -> str:
    """How a PyTorch baseline ran, for its description: 'transformers PyTorch <version>[ <call>],
    float32, <attention> attention[, <device>], <n> threads'."""
    import torch

    where = f", {device}" if device else ""
    return (f"transformers PyTorch {torch.__version__}{' ' + call if call else ''}, float32, {attention} attention"
            f"{where}, {torch.get_num_threads()} threads")


def torch_model_from_params(params: Any, config: ModelConfig) -> Any:
    """Build an HF Llama/Qwen2 causal LM in float32 holding `params` (Linear weights transposed back)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(config.family, **hf_config_dict(config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)

    def t(a: Any, transpose: bool = False) -> Any:
        a = np.asarray(jax.device_get(a), np.float32)
        return torch.from_numpy(np.array(a.T if transpose else a, order="C"))  # a writable copy

    lp = params["layers"]
    state = {"model.embed_tokens.weight": t(params["embed"]), "model.norm.weight": t(params["final_norm"])}
    state["lm_head.weight"] = state["model.embed_tokens.weight"] if config.tie_embeddings else t(params["lm_head"], True)
    names = {"wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
             "wo": "self_attn.o_proj.weight", "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
             "w_down": "mlp.down_proj.weight", "attn_norm": "input_layernorm.weight",
             "mlp_norm": "post_attention_layernorm.weight", "bq": "self_attn.q_proj.bias",
             "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias"}
    for ours, theirs in names.items():
        if ours not in lp:
            continue
        stacked = np.asarray(jax.device_get(lp[ours]), np.float32)
        for i in range(config.n_layers):
            state[f"model.layers.{i}.{theirs}"] = t(stacked[i], transpose=stacked.ndim == 3)
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    # Non-persistent buffers (rotary inverse frequencies) were created on the meta device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_config)
    return model.eval()
