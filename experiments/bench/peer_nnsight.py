"""nnsight 0.8: scans with one invoke per variant in a trace, and steered generation.

Scans follow nnsight's documented batching: `with model.trace() as tracer:` and one
`with tracer.invoke(inputs):` per variant, each invoke's body editing its own rows (a module's
`.input` for head and neuron edits, `.output` for sublayer injections) and saving the final norm's
output at t*. nnsight combines the invokes into one forward. The causal LM runs with
`logits_to_keep=1`, so its LM head costs only the last position.

Steered generation: `with model.generate(...)` and `for step in tracer.iter[:new_tokens]:` to
apply the per-row neuron and head additions at every forward of the decoding loop (a bounded loop,
so that the result can be read after it).

The model is its own copy of the weights (nnsight wraps the module tree).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from experiments.bench.common import BenchContext, torch_model_from_params, torch_runtime
from experiments.bench.peer_common import Edit, id_tokenizer, scores
from experiments.bench.peers import FullForwardPeer


def _wrapped(ctx: BenchContext) -> Any:
    """The context's weights in a TransformersModel, built once per context."""
    from nnsight import TransformersModel

    return ctx.shared("nnsight", lambda: TransformersModel(torch_model_from_params(ctx.params, ctx.config),
                                                           tokenizer=id_tokenizer(ctx.config.vocab_size)))


def _edit(model: Any, edit: Edit) -> None:
    """Apply one variant's edit inside its invoke (the invoke sees only its own rows)."""
    import torch

    block = model.model.layers[edit.layer]
    where = slice(None) if edit.all_positions else -1
    if edit.site == "head_in":
        block.self_attn.o_proj.input[:, where, edit.start:edit.stop] = 0
    elif edit.site == "neuron_in":
        block.mlp.down_proj.input[:, where, edit.start:edit.stop] = 0
    elif edit.site == "attn_out":
        block.self_attn.output[0][:, where] += torch.from_numpy(edit.vector)
    else:
        block.mlp.output[:, where] += torch.from_numpy(edit.vector)


class NNsightScanPeer(FullForwardPeer):
    name = "nnsight"
    batching = "full"

    def __init__(self, ctx: BenchContext, chunk: int):
        super().__init__(ctx, chunk)
        import nnsight
        import torch

        self.torch, self.version = torch, nnsight.__version__
        self.model = _wrapped(ctx)

    def _scores(self, edits: Sequence[Edit]) -> np.ndarray:
        """Scores [max(len(edits), 1), B]; no edits runs one clean invoke."""
        edits = list(edits) or [None]
        model, inputs = self.model, self.job.torch_inputs()
        finals: list[Any] = [None] * len(edits)  # filled by slot: invokes need not finish in order
        with self.torch.inference_mode():
            with model.trace(logits_to_keep=1) as tracer:
                for slot, edit in enumerate(edits):
                    with tracer.invoke(inputs):
                        if edit is not None:
                            _edit(model, edit)
                        finals[slot] = model.model.norm.output[:, -1].save()
        return scores(self.torch.cat(finals), self.job.readout, len(edits))

    def description(self) -> str:
        return (f"nnsight {self.version} over {torch_runtime(self.model.attn_implementation)}, "
                f"{self.chunk} invokes (variants) per trace")


def nnsight_steered_generation(ctx: BenchContext, tokens: np.ndarray, mask: np.ndarray, neuron_add: np.ndarray,
                               head_add: np.ndarray, new_tokens: int) -> tuple[Callable[[], Any], str]:
    """Greedy generation with per-row additions at every step: neuron_add [L, B, F] on t* and later
    positions, head_add [L, B, H * Dh] on every position. Returns (call -> new tokens [B, N], description)."""
    import nnsight
    import torch

    model = _wrapped(ctx)
    n_layers = ctx.config.n_layers
    inputs = {"input_ids": torch.from_numpy(tokens.astype(np.int64)),
              "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    neurons, heads = torch.from_numpy(neuron_add), torch.from_numpy(head_add)
    eos = list(ctx.config.eos_token_ids) or None

    def run() -> np.ndarray:
        with torch.inference_mode():
            with model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=eos, pad_token_id=0) as tracer:
                for _ in tracer.iter[:new_tokens]:  # every forward of the loop, then read the result
                    for layer in range(n_layers):
                        block = model.model.layers[layer]
                        block.self_attn.o_proj.input[:] += heads[layer][:, None]
                        block.mlp.down_proj.input[:, -1] += neurons[layer]
                ids = tracer.result.save()
        return ids[:, tokens.shape[1]:].numpy()

    return run, (f"nnsight {nnsight.__version__} generate over {torch_runtime(model.attn_implementation)}, "
                 "edits at every step")
