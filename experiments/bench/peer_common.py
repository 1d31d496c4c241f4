"""What the scan peers share: one variant's edit as a value, the prompt batch, and batched rows.

A scan variant is one `Edit` at t* (the last position; prompts are left-padded) or at every
position: zero a column range of a site's input (a head's slice of the o_proj input, one neuron of
the down_proj input), or add a vector to a sublayer's output. Every peer reads the same final
hidden state (after the final norm) at t*, projected on the same read-out vector, and reports each
variant's effect: its score minus the clean score, [n_variants, B].

Batched peers fold several variants into one forward: variant v of a chunk owns rows
v*B .. (v+1)*B - 1 of a batch of the prompts repeated once per variant (`chunk_rows`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

SITES = ("head_in", "neuron_in", "attn_out", "mlp_out")
ZERO_SITES = ("head_in", "neuron_in")  # the edit zeroes columns [start, stop) of the module's input
ADD_SITES = ("attn_out", "mlp_out")  # the edit adds `vector` to the sublayer's output


@dataclasses.dataclass(frozen=True)
class Edit:
    layer: int
    site: str
    start: int = 0
    stop: int = 0
    vector: np.ndarray | None = None
    all_positions: bool = False  # every position instead of t* only

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"Edit.site={self.site!r}; expected one of {SITES}")
        if (self.site in ADD_SITES) != (self.vector is not None):
            raise ValueError(f"Edit at {self.site}: a vector is given exactly for {ADD_SITES}")


@dataclasses.dataclass(frozen=True)
class ScanJob:
    """The prompt batch and read-out every variant of one scan shares."""

    tokens: np.ndarray  # [B, T] int, left-padded
    mask: np.ndarray  # [B, T] bool
    readout: np.ndarray  # [D] float32

    @property
    def position_ids(self) -> np.ndarray:
        return np.maximum(np.cumsum(self.mask, axis=1) - 1, 0)

    def torch_inputs(self, repeats: int = 1) -> dict[str, Any]:
        """input_ids, attention_mask and position_ids as int64 tensors, the batch repeated `repeats` times."""
        import torch

        arrays = {"input_ids": self.tokens, "attention_mask": self.mask, "position_ids": self.position_ids}
        return {k: torch.from_numpy(np.tile(v.astype(np.int64), (repeats, 1))) for k, v in arrays.items()}


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def apply_edit(x: Any, edit: Edit, rows: slice) -> None:
    """Apply `edit` in place to the site tensor x [R, T, width] on `rows`."""
    import torch

    where = slice(None) if edit.all_positions else -1
    if edit.site in ZERO_SITES:
        x[rows, where, edit.start:edit.stop] = 0
    else:
        x[rows, where] += torch.from_numpy(edit.vector).to(x.dtype)


def rows_of(variant: int, prompts: int) -> slice:
    return slice(variant * prompts, (variant + 1) * prompts)


def by_module(edits: Sequence[Edit]) -> dict[tuple[int, str], list[tuple[int, Edit]]]:
    """A chunk's edits grouped by (layer, site), each with its variant slot in the chunk."""
    grouped: dict[tuple[int, str], list[tuple[int, Edit]]] = {}
    for slot, edit in enumerate(edits):
        grouped.setdefault((edit.layer, edit.site), []).append((slot, edit))
    return grouped


def scores(final: Any, readout: np.ndarray, variants: int) -> np.ndarray:
    """Final hidden states at t* [variants * B, D] -> scores [variants, B]."""
    import torch

    return (final.float() @ torch.from_numpy(readout)).reshape(variants, -1).numpy()


def id_tokenizer(vocab_size: int, pad_id: int = 0) -> Any:
    """A tokenizer over the ids themselves ("0", "1", ...), for the peers that insist on one.

    The peers only ever receive token ids; nnsight pads and TransformerLens normalises through a
    tokenizer object, and neither may reach the network for the real one. No BOS token, so
    TransformerLens does not try to reload it with one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {str(i): i for i in range(vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=str(pad_id)))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=str(pad_id), eos_token=str(pad_id))
