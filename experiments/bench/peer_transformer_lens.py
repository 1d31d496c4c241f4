"""TransformerLens 4: `run_with_hooks` with a chunk of variants in the batch.

TransformerLens 4 has no `HookedTransformer`; its model is `TransformerBridge`, booted here from
an HF model holding the same weights (`boot_transformers(..., hf_model=...)`, no download). The
bridge keeps HF's weights as they are (no LayerNorm folding) and switches the model to eager
attention so that its attention hooks fire. Hooks: `blocks.{l}.attn.hook_z` (the heads' outputs
entering o_proj, [B, T, H, Dh]), `blocks.{l}.mlp.out.hook_in` (the neurons entering down_proj), `blocks.{l}.hook_attn_out` / `hook_mlp_out` (sublayer outputs), and
`ln_final.hook_out` for the read-out. `logits_to_keep=1` keeps the LM head to the last position.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from experiments.bench.common import BenchContext, torch_model_from_params, torch_runtime
from experiments.bench.peer_common import Edit, apply_edit, by_module, id_tokenizer, rows_of, scores
from experiments.bench.peers import FullForwardPeer

HOOK_NAMES = {"head_in": "blocks.{}.attn.hook_z", "neuron_in": "blocks.{}.mlp.out.hook_in",
              "attn_out": "blocks.{}.hook_attn_out", "mlp_out": "blocks.{}.hook_mlp_out"}


def _bridge(ctx: BenchContext) -> Any:
    """The context's weights in a TransformerBridge, built once per context."""
    from transformer_lens.model_bridge import TransformerBridge

    def boot() -> Any:
        model = torch_model_from_params(ctx.params, ctx.config)
        return TransformerBridge.boot_transformers(ctx.name, hf_model=model, device="cpu",
                                                   tokenizer=id_tokenizer(ctx.config.vocab_size))
    return ctx.shared("transformer_lens", boot)


class TransformerLensScanPeer(FullForwardPeer):
    name = "transformer_lens"
    batching = "full"

    def __init__(self, ctx: BenchContext, chunk: int):
        super().__init__(ctx, chunk)
        import torch
        import transformer_lens  # noqa: F401  (fails here, not mid-run, when absent)
        from importlib.metadata import version

        self.torch, self.version = torch, version("transformer-lens")
        self.bridge = _bridge(ctx)

    def _scores(self, edits: Sequence[Edit]) -> np.ndarray:
        variants, prompts = max(len(edits), 1), self.job.tokens.shape[0]
        inputs = self.job.torch_inputs(variants)
        final: list[Any] = []

        def make(group: list[tuple[int, Edit]]) -> Any:
            def edit(x: Any, hook: Any) -> Any:
                flat = x.view(*x.shape[:2], -1)  # hook_z's heads side by side, as o_proj reads them
                for slot, e in group:
                    apply_edit(flat, e, rows_of(slot, prompts))
                return x
            return edit

        def read(x: Any, hook: Any) -> Any:
            final.append(x[:, -1].clone())
            return x

        hooks = [(HOOK_NAMES[site].format(layer), make(group)) for (layer, site), group in by_module(edits).items()]
        with self.torch.inference_mode():
            self.bridge.run_with_hooks(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                       position_ids=inputs["position_ids"], logits_to_keep=1, return_type=None,
                                       fwd_hooks=hooks + [("ln_final.hook_out", read)])
        return scores(final[0], self.job.readout, variants)

    def description(self) -> str:
        attention = self.bridge.original_model.config._attn_implementation
        return (f"TransformerLens {self.version} TransformerBridge over {torch_runtime(attention)}, "
                f"run_with_hooks with {self.chunk} variants per forward")
