"""HF PyTorch with forward hooks: one hooked forward per variant, or many variants in the batch.

`HFHooksPeer` is the official code's way, batched over the prompts: register a hook, run one
forward of the prompt batch, read the score, remove the hook. `HFBatchedPeer` folds a chunk of
variants into one forward of the prompts repeated once per variant; one hook per touched module
edits each variant's own rows. Both call the decoder (`model.model`), so no LM head runs.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from experiments.bench.common import torch_runtime
from experiments.bench.peer_common import Edit, apply_edit, by_module, rows_of, scores
from experiments.bench.peers import FullForwardPeer


def site_module(model: Any, layer: int, site: str) -> tuple[Any, bool]:
    """The HF module an edit at `site` hooks, and whether it is a pre-hook (on the module's input)."""
    block = model.model.layers[layer]
    return {"head_in": (block.self_attn.o_proj, True), "neuron_in": (block.mlp.down_proj, True),
            "attn_out": (block.self_attn, False), "mlp_out": (block.mlp, False)}[site]


@contextlib.contextmanager
def hooked(model: Any, edits: Sequence[Edit], prompts: int) -> Iterator[None]:
    """Hooks that apply edits[v] to rows v*prompts .. (v+1)*prompts - 1, removed on exit."""
    handles = []

    def make(group: list[tuple[int, Edit]], pre: bool) -> Any:
        def edit_input(module: Any, args: tuple) -> None:
            for slot, edit in group:
                apply_edit(args[0], edit, rows_of(slot, prompts))

        def edit_output(module: Any, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            for slot, edit in group:
                apply_edit(out, edit, rows_of(slot, prompts))

        return edit_input if pre else edit_output

    try:
        for (layer, site), group in by_module(edits).items():
            module, pre = site_module(model, layer, site)
            hook = make(group, pre)
            handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class HFBatchedPeer(FullForwardPeer):
    name = "hf_batched"
    batching = "full"

    def __init__(self, ctx: Any, chunk: int):
        super().__init__(ctx, chunk)
        import torch

        self.torch = torch
        self.model = ctx.torch_model

    def _scores(self, edits: Sequence[Edit]) -> np.ndarray:
        variants = max(len(edits), 1)
        with self.torch.inference_mode(), hooked(self.model, edits, self.job.tokens.shape[0]):
            final = self.model.model(**self.job.torch_inputs(variants), use_cache=False).last_hidden_state[:, -1]
        return scores(final, self.job.readout, variants)

    def description(self) -> str:
        way = "one hooked forward per variant" if self.chunk == 1 else f"{self.chunk} variants per hooked forward"
        return f"{torch_runtime(self.model.config._attn_implementation)}, {way}"


class HFHooksPeer(HFBatchedPeer):
    name = "hf_hooks"
    batching = "one"
