"""HF PyTorch with the prefix computed once: each variant is a one-token pass from its layer upward.

The shortcut emojax's scans use, written with HF's own modules. One cached forward of the prompts
keeps every layer's keys and values and the residual entering each layer at t*. An edit at t*
leaves every earlier position, and every layer below its own, as they were; so a variant at layer
l runs only t* through layers l .. L-1, attending over the cached keys and values of the positions
before it. Variants are grouped by layer and a chunk of them runs as one batch of one-token rows,
each row with its own edit (the same hooks as `peer_hf_batched`). Edits at every position do not
allow the shortcut.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from experiments.bench.common import torch_runtime
from experiments.bench.peer_common import Edit, ScanJob, chunks, scores
from experiments.bench.peer_hf_batched import hooked
from experiments.bench.peers import ScanPeer, spread


class PrefixCache:
    """Stands in for HF's cache object during a suffix pass: each layer's cached keys/values of the
    positions before t* (repeated once per variant), followed by t*'s own."""

    def __init__(self, keys: list[Any], values: list[Any], variants: int):
        self.keys, self.values, self.variants = keys, values, variants

    def update(self, key_states: Any, value_states: Any, layer_idx: int, **_: Any) -> tuple[Any, Any]:
        import torch

        repeat = (self.variants, 1, 1, 1)
        return (torch.cat([self.keys[layer_idx].repeat(repeat), key_states], dim=2),
                torch.cat([self.values[layer_idx].repeat(repeat), value_states], dim=2))


class HFPrefixPeer(ScanPeer):
    name = "hf_prefix"
    batching = "suffix"

    def __init__(self, ctx: Any, chunk: int):
        super().__init__(ctx, chunk)
        import torch

        self.torch = torch
        self.model = ctx.torch_model
        self.n_layers = ctx.config.n_layers

    def unsupported(self, edit: Edit) -> str | None:
        return "edits at every position change the prefix" if edit.all_positions else None

    def setup(self, job: ScanJob) -> None:
        torch = self.torch
        self.job = job
        decoder = self.model.model
        entering: list[Any] = []
        handles = [layer.register_forward_pre_hook(lambda m, args: entering.append(args[0][:, -1:].clone()))
                   for layer in decoder.layers]
        try:
            with torch.inference_mode():
                out = decoder(**job.torch_inputs(), use_cache=True)
        finally:
            for handle in handles:
                handle.remove()
        cache = out.cache
        self.keys = [layer.keys[:, :, :-1] for layer in cache.layers]
        self.values = [layer.values[:, :, :-1] for layer in cache.layers]
        self.entering = entering  # [B, 1, D] per layer
        self.clean = scores(out.last_hidden_state[:, -1], job.readout, 1)[0]
        inputs = job.torch_inputs()
        self.position = inputs["position_ids"][:, -1:]
        self.allowed = inputs["attention_mask"].bool()[:, None, None, :]  # [B, 1, 1, T]: t* sees itself

    def _scores(self, layer: int, edits: Sequence[Edit]) -> np.ndarray:
        torch, decoder, variants = self.torch, self.model.model, len(edits)
        with torch.inference_mode(), hooked(self.model, edits, self.job.tokens.shape[0]):
            h = self.entering[layer].repeat(variants, 1, 1)
            position = self.position.repeat(variants, 1)
            rotary = decoder.rotary_emb(h, position_ids=position)
            allowed = self.allowed.repeat(variants, 1, 1, 1)
            cache = PrefixCache(self.keys, self.values, variants)
            for block in decoder.layers[layer:]:
                h = block(h, attention_mask=allowed, position_ids=position, cache=cache, position_embeddings=rotary)
            final = decoder.norm(h)[:, -1]
        return scores(final, self.job.readout, variants)

    def effects(self, edits: Sequence[Edit]) -> np.ndarray:
        out = np.empty((len(edits), self.job.tokens.shape[0]), np.float32)
        for layer in sorted({e.layer for e in edits}):
            slots = [i for i, e in enumerate(edits) if e.layer == layer]
            for chunk in chunks(slots, self.chunk):
                out[chunk] = self._scores(layer, [edits[i] for i in chunk]) - self.clean
        return out

    def cost(self, edits: Sequence[Edit]) -> float:
        """Layers each variant runs through (its own and those above it)."""
        return float(sum(self.n_layers - e.layer for e in edits))

    def sample(self, edits: Sequence[Edit], k: int) -> list[int]:
        """Whole chunks as the full scan runs them: the first chunk of variants at each of
        max(k // chunk, 4) layers spread over the depth (so the timed batches are full-size)."""
        layers = sorted({e.layer for e in edits})
        picked = [layers[i] for i in spread(len(layers), max(k // self.chunk, 4))]
        return [i for layer in picked for i in [j for j, e in enumerate(edits) if e.layer == layer][:self.chunk]]

    def description(self) -> str:
        return (f"{torch_runtime(self.model.config._attn_implementation)}, prefix cached once, up to {self.chunk}"
                " variants per one-token pass from the edited layer upward")
