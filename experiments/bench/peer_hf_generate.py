"""HF `generate` with per-row steering hooks: the plain-PyTorch peer of `generate_steered`.

Pre-hooks on every layer's o_proj and down_proj add each row's own head and neuron vectors: the
head additions at every position (adding at padding too changes nothing, padding is masked out of
attention), the neuron additions at the last position of each call, which is t* in the prefill
and the new token in every decoding step (emojax's "from_last").
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from experiments.bench.common import BenchContext, torch_runtime


def hf_steered_generation(ctx: BenchContext, tokens: np.ndarray, mask: np.ndarray, neuron_add: np.ndarray,
                          head_add: np.ndarray, new_tokens: int) -> tuple[Callable[[], Any], str]:
    """neuron_add [L, B, F], head_add [L, B, H * Dh]. Returns (call -> new tokens [B, N], description)."""
    import torch

    model = ctx.torch_model
    neurons, heads = torch.from_numpy(neuron_add), torch.from_numpy(head_add)
    ids = torch.from_numpy(tokens.astype(np.int64))
    attention = torch.from_numpy(mask.astype(np.int64))
    eos = list(ctx.config.eos_token_ids) or None

    def add_heads(layer: int) -> Any:
        def hook(module: Any, args: tuple) -> None:
            args[0].add_(heads[layer][:, None])
        return hook

    def add_neurons(layer: int) -> Any:
        def hook(module: Any, args: tuple) -> None:
            args[0][:, -1] += neurons[layer]
        return hook

    def run() -> np.ndarray:
        handles = []
        for layer, block in enumerate(model.model.layers):
            handles.append(block.self_attn.o_proj.register_forward_pre_hook(add_heads(layer)))
            handles.append(block.mlp.down_proj.register_forward_pre_hook(add_neurons(layer)))
        try:
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=attention, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0)
        finally:
            for handle in handles:
                handle.remove()
        return out[:, tokens.shape[1]:].numpy()

    return run, (f"{torch_runtime(model.config._attn_implementation, call='generate')}, "
                 "per-row pre-hooks on o_proj and down_proj")
