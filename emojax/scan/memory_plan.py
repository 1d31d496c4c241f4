"""Chunk sizes from a memory budget: the most rows per chunk whose working set fits.

A stage holds resident state (the weights, a prompt prefix, its outputs) and, per chunk, a working
set that grows with the rows it runs at once: a scan's variants (each `prompts` one-token rows or
whole sequences), a capture's prompts, a generation's rows. `plan_chunk` gives the most rows that
fit in what the budget leaves after the resident state, at most `wanted`; a budget that cannot hold
one row is refused with a one-line error naming the stage and what it needs. Chunk sizes never
change what a scan computes (emojax.scan.chunking), only its peak memory.

The byte counts below are estimates of the largest live arrays, with activations counted in float32
(scores and norms are float32 whatever the weights' dtype) and doubled for the buffers XLA keeps
alive together (a fusion's inputs beside its outputs); norms, rotary tables and other small arrays
are left out.

    budget = default_budget()                    # what the device reports (CPU: available host memory), less a margin
    plan = plan_chunk("neuron scan", budget=budget, resident=weight_bytes(cfg, dtype) + ...,
                      row_bytes=prompts * token_bytes(cfg, context=T), wanted=cfg.d_ff)
    causal_neuron_scan(..., chunk=plan.rows)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from emojax.model.config import ModelConfig
from emojax.model.params import param_shapes

MIB = 2 ** 20
F32 = 4
LIVE_COPIES = 2  # a fusion's inputs stay alive beside its outputs
MARGIN_FRACTION = 0.1  # left to the runtime, the compiler and everything else on the machine
MIN_MARGIN_BYTES = 512 * MIB
_MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


class BudgetTooSmall(ValueError):
    """The memory budget cannot hold one row of a stage (the message is one line)."""


def mib(n: float) -> float:
    return round(n / MIB, 1)


def _host_available_bytes() -> int:
    """MemAvailable of /proc/meminfo (memory new allocations can get without swapping)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def available_bytes(device: Any = None) -> int:
    """Free memory of `device` (default: the first): the allocator's limit less what is in use on an
    accelerator, available host memory on a CPU."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return _host_available_bytes()


def default_budget(device: Any = None) -> int:
    """`available_bytes` less a margin of 10% (at least 512 MiB)."""
    free = available_bytes(device)
    return max(0, free - max(int(free * MARGIN_FRACTION), MIN_MARGIN_BYTES))


# --- what stages hold ------------------------------------------------------------------------------

def weight_bytes(config: ModelConfig, dtype: Any) -> int:
    shapes = jax.tree_util.tree_leaves(param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(s) for s in shapes) * np.dtype(dtype).itemsize


def layer_matrix_elements(config: ModelConfig) -> int:
    shapes = param_shapes(config)
    return sum(math.prod(shapes["layers"][name]) for name in _MATRICES)


def cpu_upcast_bytes(config: ModelConfig, dtype: Any, platform: str | None = None) -> int:
    """The float32 copy of the layer matrices that XLA's CPU backend makes for every compiled call on
    bfloat16 or float16 weights (it has no half-precision matmul, so it converts the stacked weights
    before the layer loop); 0 on an accelerator or for float32. Measured at the Llama-3.2-3B shape in
    bfloat16: 11.2 GB over the 6.4 GB of weights in the capture."""
    platform = platform or jax.devices()[0].platform
    if platform != "cpu" or np.dtype(dtype).itemsize >= F32:
        return 0
    return layer_matrix_elements(config) * F32


def held_weight_bytes(config: ModelConfig, dtype: Any, platform: str | None = None) -> int:
    """What a compiled call holds for the weights: the weights and `cpu_upcast_bytes`."""
    return weight_bytes(config, dtype) + cpu_upcast_bytes(config, dtype, platform)


def decode_copy_bytes(config: ModelConfig, dtype: Any) -> int:
    """The transposed copy of the layer matrices (and of an untied LM head) a generation makes once."""
    n = layer_matrix_elements(config)
    if not config.tie_embeddings:
        n += math.prod(param_shapes(config)["lm_head"])
    return n * np.dtype(dtype).itemsize


def prefix_bytes(config: ModelConfig, prompts: int, tokens: int, dtype: Any, keep_sequence: bool = False) -> int:
    """A captured prefix (emojax.scan.prefix): keys/values of every layer, the states at t*, and with
    keep_sequence the residual stream at every position."""
    c, item = config, np.dtype(dtype).itemsize
    kv = 2 * c.n_layers * prompts * tokens * c.kv_dim * item
    last = prompts * c.n_layers * (3 * c.d_model + c.q_dim + c.d_ff) * item
    sequence = prompts * (c.n_layers + 1) * tokens * c.d_model * item if keep_sequence else 0
    return kv + last + sequence


def token_bytes(config: ModelConfig, context: int) -> int:
    """Working set of one token row through one layer, attending over `context` positions: the
    residual and its edit, the norms and branch outputs, q/k/v and the head outputs, the scores and
    probabilities, and the MLP's gate, up and activation."""
    c = config
    per_row = (6 * c.d_model + 2 * c.q_dim + 2 * c.kv_dim + 2 * c.n_heads * (context + 1) + 3 * c.d_ff)
    return LIVE_COPIES * F32 * per_row


def sequence_bytes(config: ModelConfig, tokens: int) -> int:
    """Working set of one prompt of `tokens` positions through one layer (a capture, a prefill, a
    recompute from a layer): every position's token row, attending over the whole prompt."""
    return tokens * token_bytes(config, tokens)


def generation_row_bytes(config: ModelConfig, prompt_tokens: int, new_tokens: int, dtype: Any) -> int:
    """One generated row: its KV cache, its prompt's prefill, the logits and their processing
    (penalties, the n-gram ban), the seen-token set, and per-row edits of every layer."""
    c, item = config, np.dtype(dtype).itemsize
    cache = 2 * c.n_layers * (prompt_tokens + new_tokens) * c.kv_dim * item
    logits = 4 * F32 * c.vocab_size + c.vocab_size
    edits = F32 * c.n_layers * (c.d_ff + c.q_dim + 2 * c.d_model)
    return cache + sequence_bytes(config, prompt_tokens) + logits + edits


# --- the plan ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """Rows per chunk of one stage, and the memory it was planned for."""

    stage: str
    rows: int
    row_bytes: int
    resident_bytes: int
    budget_bytes: int

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.rows * self.row_bytes

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "row_mib": mib(self.row_bytes), "resident_mib": mib(self.resident_bytes),
                "planned_peak_mib": mib(self.peak_bytes), "budget_mib": mib(self.budget_bytes)}


def plan_chunk(stage: str, *, budget: int, resident: int, row_bytes: int, wanted: int) -> ChunkPlan:
    """The most rows (at most `wanted`) whose working set fits beside `resident` bytes in `budget`."""
    if wanted < 1 or row_bytes < 1:
        raise ValueError(f"{stage}: plan_chunk needs wanted >= 1 and row_bytes >= 1 (got {wanted}, {row_bytes})")
    fit = (budget - resident) // row_bytes
    if fit < 1:
        raise BudgetTooSmall(f"{stage}: one row needs {mib(resident + row_bytes)} MiB ({mib(resident)} MiB "
                             f"resident + {mib(row_bytes)} MiB per row) but the memory budget is {mib(budget)} MiB")
    return ChunkPlan(stage, int(min(wanted, fit)), row_bytes, resident, budget)


def plan_generation(stage: str, *, budget: int, resident: int, config: ModelConfig, dtype: Any, row_bytes: int,
                    wanted: int) -> tuple[ChunkPlan, bool]:
    """Rows per generation chunk, and whether to decode with `low_memory` (emojax.generation.loop): the
    decode step's transposed weight copy when the budget holds it beside one row, else no copy."""
    try:
        return plan_chunk(stage, budget=budget, resident=resident + decode_copy_bytes(config, dtype),
                          row_bytes=row_bytes, wanted=wanted), False
    except BudgetTooSmall:
        return plan_chunk(f"{stage} (low_memory)", budget=budget, resident=resident, row_bytes=row_bytes,
                          wanted=wanted), True


def decode_without_copy(config: ModelConfig, dtype: Any, *, rows: int, prompt_tokens: int, new_tokens: int,
                        budget: int | None = None) -> bool:
    """Whether a generation of `rows` rows should decode with `low_memory`: True when the default
    budget (or `budget`) cannot hold the transposed weight copy beside the weights and the rows."""
    if budget is None:
        try:
            budget = default_budget()
        except OSError:  # no /proc/meminfo (not Linux): nothing says the copy does not fit
            return False
    row = generation_row_bytes(config, prompt_tokens, new_tokens, dtype)
    try:
        return plan_generation("generation", budget=budget, resident=held_weight_bytes(config, dtype), config=config,
                               dtype=dtype, row_bytes=row, wanted=rows)[1]
    except BudgetTooSmall:
        return True  # the estimate says even no copy is too tight; without the copy is the better try
