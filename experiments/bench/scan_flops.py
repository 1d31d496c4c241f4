"""FLOPs of the exact scans, by the way they are run, so a scan's time can be read as a rate.

Counted as elsewhere in the benchmarks (`bench_common.forward_flops`): 2 x the weight-matmul
multiply-adds plus the attention score and value products; norms, rotary tables, softmax and the
edits themselves are left out. Three ways of running a scan of variants over B prompts of T tokens:

    full_forward_scan_flops   one decoder forward of the B x T batch per variant, plus the clean one
                              (hf_hooks, hf_batched, nnsight, transformer_lens; no LM head)
    suffix_scan_flops         the prefix forward once, then B one-token rows per variant from its
                              site upward over T cached positions (emojax: a head edit at layer l
                              starts at layer l's MLP, a neuron edit at layer l + 1)
    suffix_scan_flops(..., whole_edited_layer=True)
                              the same, rerunning the whole edited layer (hf_prefix, whose hooks
                              edit inside the block)
    recompute_scan_flops      the prefix forward once, then for each variant the B x T batch from its
                              layer upward (emojax's edits at every position)
"""
from __future__ import annotations

from typing import Sequence

from emojax.model.config import ModelConfig
from experiments.bench.common import forward_flops
from experiments.bench.peer_common import Edit

AFTER_ATTENTION = ("head_in", "attn_out")  # the edit lands on the attention branch; after_mlp otherwise


def attention_product_flops(config: ModelConfig, rows: int) -> int:
    """The q, k, v and o weight products of `rows` one-token rows."""
    return 2 * rows * config.d_model * (2 * config.q_dim + 2 * config.kv_dim)


def attention_layer_flops(config: ModelConfig, rows: int, context: int) -> int:
    """q, k, v and o products of `rows` one-token rows, and their scores and values over `context` keys."""
    return attention_product_flops(config, rows) + 2 * 2 * rows * config.n_heads * config.head_dim * context


def mlp_layer_flops(config: ModelConfig, rows: int) -> int:
    return 2 * rows * config.d_model * 3 * config.d_ff


def suffix_scan_flops(config: ModelConfig, edits: Sequence[Edit], prompts: int, tokens: int,
                      whole_edited_layer: bool = False) -> int:
    """The prefix forward of prompts x tokens, then every variant's one-token rows from its site up."""
    total = forward_flops(config, prompts, tokens, logits="none")
    attention, mlp = attention_layer_flops(config, prompts, tokens), mlp_layer_flops(config, prompts)
    for edit in edits:
        above = config.n_layers - edit.layer - 1
        if whole_edited_layer:
            total += (above + 1) * (attention + mlp)
        else:
            total += above * (attention + mlp) + (mlp if edit.site in AFTER_ATTENTION else 0)
    return total


def full_forward_scan_flops(config: ModelConfig, variants: int, prompts: int, tokens: int) -> int:
    """One decoder forward of the prompt batch per variant, and the clean forward."""
    return (variants + 1) * forward_flops(config, prompts, tokens, logits="none")


def recompute_scan_flops(config: ModelConfig, variant_layers: Sequence[int], prompts: int, tokens: int) -> int:
    """The prefix forward of prompts x tokens, then each variant's whole batch from its layer up
    (one entry of `variant_layers` per variant; the edited layer counted whole)."""
    per_layer = forward_flops(config, prompts, tokens, logits="none") // config.n_layers
    return forward_flops(config, prompts, tokens, logits="none") + sum(
        (config.n_layers - layer) * per_layer for layer in variant_layers)
