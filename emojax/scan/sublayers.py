"""Sublayer influence scan (method.md S6d): inject along a direction at t*, read the final score.

For each kind k (0 = attention, 1 = MLP), layer l and alpha, the branch output of sublayer (k, l) at
t* gets dose * w with dose = alpha * sigma[k, l]; the read-out is <h_final[t*], readout>. Every
perturbed run is a one-token suffix pass (T6); all kinds x layers x alphas x prompts run as vmapped
suffix passes grouped by site, with the clean score computed once (it does not depend on alpha).

    result = sublayer_influence(params, prefix, directions, sigma, alphas, readout, config=cfg)
        directions [2, L, D] shared or [B, 2, L, D] per row (each row's emotion);
        sigma [2, L]; alphas [A]; readout [D], [B, D] or [B, R, D].
    result.perturbed [2, L, A, B(, R)], result.base [B(, R)], result.dose [2, L, A],
    result.influence = (perturbed - base) / dose, per row.

The stage averages `influence` over each emotion's rows (D_e) and then over alpha: the mean of
per-row ratios equals the ratio of means because the dose is shared by the rows.
The injection at (mlp, L-1) is pre-norm (D3), exactly as `o^mlp_{L-1}[t*] += dose * w`.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from emojax.model.config import ModelConfig
from emojax.scan import chunking
from emojax.scan.prefix import Prefix
from emojax.scan.suffix import clean_scores, suffix_scores

Array = Any


class Influence(NamedTuple):
    perturbed: np.ndarray
    base: np.ndarray
    dose: np.ndarray
    influence: np.ndarray


def sublayer_influence(params: dict[str, Any], prefix: Prefix, directions: Array, sigma: Array,
                       alphas: Sequence[float], readout: Array, *, config: ModelConfig,
                       chunk: int | None = None) -> Influence:
    """Run the S6d scan; see the module docstring for shapes."""
    L, D, b = config.n_layers, config.d_model, prefix.batch
    directions = np.asarray(directions, np.float32)
    if directions.shape not in ((2, L, D), (b, 2, L, D)):
        raise ValueError(f"sublayer_influence: directions {directions.shape}; expected [2, {L}, {D}] "
                         f"or [{b}, 2, {L}, {D}]")
    sigma = np.asarray(sigma, np.float32)
    if sigma.shape != (2, L):
        raise ValueError(f"sublayer_influence: sigma {sigma.shape}; expected [2, {L}]")
    alphas = np.asarray(alphas, np.float32)
    dose = alphas[None, None, :] * sigma[:, :, None]  # [2, L, A]
    per_row = np.broadcast_to(directions, (b, 2, L, D))
    readout = chunking.as_readout(readout, b, D)
    base = clean_scores(prefix, jnp.asarray(readout))
    perturbed = np.zeros((2, L, len(alphas)) + base.shape, np.float32)
    sites = [(kind, layer) for kind in range(2) for layer in range(L)]
    for kind, layer in chunking.progress(sites, len(sites), "sublayer sites"):
        deltas = dose[kind, layer][:, None, None] * per_row[None, :, kind, layer]  # [A, B, D]
        perturbed[kind, layer] = suffix_scores(params, prefix, deltas, layer=layer, sublayer=kind,
                                               readout=readout, config=config, chunk=chunk)
    extra = (1,) * (perturbed.ndim - 3)
    influence = (perturbed - base) / dose.reshape(dose.shape + extra)
    return Influence(perturbed=perturbed, base=base, dose=dose, influence=influence)
