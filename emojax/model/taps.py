"""Taps: which named activations a forward pass returns, where, and reduced how.

Names follow the vocabulary researchers know from TransformerLens (per layer l):

    resid_pre   x_l             layer input                                    [D]
    attn_out    o^attn_l        attention branch output (before residual edits) [D]
    resid_mid   m_l             after the attention add (and its edits)         [D]
    z           z_l             o-projection input, query heads concatenated    [H*Dh]
    g           a_l             gated MLP activation, down-projection input     [F]
    mlp_out     o^mlp_l         MLP branch output (before residual edits)       [D]
    resid_post  x_{l+1}         layer output (after its edits)                  [D]

and one model-level point, `final` = N^final(x_L), the post-norm state the LM head reads.

A branch output is what enters the residual: for families with post-sublayer norms (Gemma 2/3) that
is after the norm, attn_out = N_attn_post(z W_O) and mlp_out = N_mlp_post(g W_down), so that
resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out hold for every family
(emojax/model/block.py).

Taps are taken at the last token of the call (`at="last"`, which is t* for a left-padded prompt)
or at every token (`at="all"`), and may be projected on device onto per-layer direction stacks so
a sweep never materialises full activations.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

LAYER_POINTS = ("resid_pre", "attn_out", "resid_mid", "z", "g", "mlp_out", "resid_post")
MODEL_POINTS = ("final",)
ALL_POINTS = LAYER_POINTS + MODEL_POINTS
Array = Any


@dataclasses.dataclass(frozen=True)
class TapSpec:
    """points: names to return. at: "last" or "all". project: names returned as projections.

    For a projected point the forward needs `directions[name]`: [L, K, width] (one stack per layer)
    or [K, width] (shared); the tap then holds <activation, direction_k> for each k.
    """

    points: tuple[str, ...] = ()
    at: str = "last"
    project: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [p for p in self.points + self.project if p not in ALL_POINTS]
        if unknown:
            raise ValueError(f"TapSpec: unknown tap point(s) {unknown}; known: {ALL_POINTS}")
        if self.at not in ("last", "all"):
            raise ValueError(f"TapSpec.at={self.at!r}; expected 'last' or 'all'")
        if not set(self.project) <= set(self.points):
            raise ValueError("TapSpec.project must name points that are also in TapSpec.points")

    @property
    def layer_points(self) -> tuple[str, ...]:
        return tuple(p for p in self.points if p in LAYER_POINTS)


def take(spec: TapSpec, name: str, value: Array, directions: Array | None) -> Array:
    """Reduce one activation [B, T, width] as the spec asks (directions already sliced per layer)."""
    if spec.at == "last":
        value = value[:, -1]
    if name in spec.project:
        value = jnp.einsum("...w,kw->...k", value.astype(jnp.float32), directions.astype(jnp.float32))
    return value
