"""Interventions as values: a pytree of arrays the forward pass takes as an explicit argument.

Every edit the paper makes is a field here, with a leading layer axis so `lax.scan` slices it
alongside the stacked weights. Identity values (scale 1, add 0) leave the forward bitwise unchanged.
A sweep is an Intervention whose arrays carry an extra leading variant axis, run under `jax.vmap`.
A per-row intervention (each batch row its own edit) puts the batch axis right after the layer axis:
`[L, B, ...]` instead of `[L, ...]`.

Where an edit applies is a static selector per field group, defined on position ids relative to the
last prompt token t* (method.md §2.4), so it means the same in prefill, cached decoding and padding:

    "all"        every non-padding position                         (P_all)
    "last"       t* only                                            (analysis edits)
    "from_last"  t* and every later (generated) position            (P_last)
    "mask"       an explicit boolean mask over position ids, [P] or [B, P]
    "none"       no position: the group is off, and its operations are left out of the program
                 (identity values change nothing but still cost their operations, which a GPU
                 decode step, bound by kernel launches, pays for)
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from emojax.model.config import ModelConfig

WHERE_MODES = ("all", "last", "from_last", "mask", "none")
GROUPS = ("resid", "neuron", "head")
LAYER_FIELDS = ("resid_add", "resid_add_rms", "neuron_scale", "neuron_add", "head_scale", "head_add")
# Rank of each per-layer field (layer axis included) when shared by all rows; one more means a batch
# axis right after the layer axis (a per-row edit).
SHARED_RANK = {"resid_add": 3, "resid_add_rms": 3, "neuron_scale": 2, "neuron_add": 2, "head_scale": 2,
               "head_add": 3}
Array = Any


@struct.dataclass
class Intervention:
    """Edits of the residual stream, the neurons (`g`) and the query heads (`z`), per layer.

    resid_add      [L, 2, D]   added after the attention (index 0) and after the MLP (index 1)
    resid_add_rms  [L, 2, D]   same sites, multiplied by rms of the residual state being edited
                               (the paper's rms-scaled steering: h + alpha * rms(h) * v)
    neuron_scale   [L, F]      g <- g * scale + add   (post-SwiGLU, the down-projection input)
    neuron_add     [L, F]
    head_scale     [L, H]      z_h <- z_h * scale + add   (o-projection input, per query head)
    head_add       [L, H, Dh]
    """

    resid_add: Array
    resid_add_rms: Array
    neuron_scale: Array
    neuron_add: Array
    head_scale: Array
    head_add: Array
    resid_mask: Array | None = None
    neuron_mask: Array | None = None
    head_mask: Array | None = None
    resid_where: str = struct.field(pytree_node=False, default="all")
    neuron_where: str = struct.field(pytree_node=False, default="all")
    head_where: str = struct.field(pytree_node=False, default="all")

    def __post_init__(self) -> None:
        for group in GROUPS:
            where = getattr(self, f"{group}_where")
            if where not in WHERE_MODES:
                raise ValueError(f"Intervention.{group}_where={where!r}; expected one of {WHERE_MODES}")
            if (where == "mask") != (getattr(self, f"{group}_mask") is not None):
                raise ValueError(f"Intervention.{group}_mask must be given exactly when {group}_where='mask'")

    @classmethod
    def identity(cls, config: ModelConfig, dtype: Any = jnp.float32, **where: str) -> "Intervention":
        L, D, F, H, Dh = config.n_layers, config.d_model, config.d_ff, config.n_heads, config.head_dim
        return cls(
            resid_add=jnp.zeros((L, 2, D), dtype),
            resid_add_rms=jnp.zeros((L, 2, D), dtype),
            neuron_scale=jnp.ones((L, F), dtype),
            neuron_add=jnp.zeros((L, F), dtype),
            head_scale=jnp.ones((L, H), dtype),
            head_add=jnp.zeros((L, H, Dh), dtype),
            **where,
        )

    def layer_edits(self) -> dict[str, Array]:
        """The per-layer edit arrays (leading layer axis), as scanned by the forward pass."""
        return {name: getattr(self, name) for name in LAYER_FIELDS}

    # Builders return new values; the dataclass is immutable.
    def with_where(self, **where: str) -> "Intervention":
        return self.replace(**{f"{k}_where": v for k, v in where.items()})

    # Indices are checked, not wrapped: -1 would silently mean the last head, and an index past the
    # end would silently do nothing (JAX drops out-of-bounds updates).
    def zero_heads(self, layer_heads: Sequence[tuple[int, int]]) -> "Intervention":
        scale = self.head_scale
        n_layers, n_heads = _shared_shape("zero_heads", "head_scale", scale, 2)
        for layer, head in layer_heads:
            scale = scale.at[_index("zero_heads", "layer", layer, n_layers),
                             _index("zero_heads", "head", head, n_heads)].set(0.0)
        return self.replace(head_scale=scale)

    def zero_neurons(self, layer_neurons: Sequence[tuple[int, int]]) -> "Intervention":
        scale = self.neuron_scale
        n_layers, n_neurons = _shared_shape("zero_neurons", "neuron_scale", scale, 2)
        for layer, neuron in layer_neurons:
            scale = scale.at[_index("zero_neurons", "layer", layer, n_layers),
                             _index("zero_neurons", "neuron", neuron, n_neurons)].set(0.0)
        return self.replace(neuron_scale=scale)

    def add_resid(self, layer: int, site: int, vector: Array, rms_scaled: bool = False) -> "Intervention":
        """Add `vector` after the attention (site 0) or the MLP (site 1) of `layer`."""
        field = "resid_add_rms" if rms_scaled else "resid_add"
        current = getattr(self, field)
        n_layers, _, d_model = _shared_shape("add_resid", field, current, 3)
        if jnp.shape(vector) != (d_model,):
            raise ValueError(f"add_resid: vector has shape {jnp.shape(vector)}, expected ({d_model},)")
        at = (_index("add_resid", "layer", layer, n_layers), _index("add_resid", "site", site, 2))
        return self.replace(**{field: current.at[at].add(vector)})


def _shared_shape(builder: str, field: str, value: Array, rank: int) -> tuple[int, ...]:
    """The shape of a field the builders edit, which must be shared by all rows (no batch axis)."""
    shape = jnp.shape(value)
    if len(shape) != rank:
        raise ValueError(f"{builder}: Intervention.{field} has shape {shape}; the builders edit interventions "
                         f"shared by all rows ({rank} axes)")
    return shape


def _index(builder: str, what: str, value: Any, size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{builder}: {what} index {value!r} is not an integer")
    if not 0 <= int(value) < size:
        raise ValueError(f"{builder}: {what} index {int(value)} is out of range (valid 0..{size - 1})")
    return int(value)


def field_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of each per-layer field when shared by all rows."""
    L, D, F, H, Dh = config.n_layers, config.d_model, config.d_ff, config.n_heads, config.head_dim
    return {"resid_add": (L, 2, D), "resid_add_rms": (L, 2, D), "neuron_scale": (L, F), "neuron_add": (L, F),
            "head_scale": (L, H), "head_add": (L, H, Dh)}


def check_fits(iv: Intervention, config: ModelConfig, batch: int) -> None:
    """Every field has exactly the config's shape, shared ([L, ...]) or per row ([L, batch, ...]), and
    every mask is [P] or [batch, P]: a field that would merely broadcast is refused, since it would
    edit more (or other) components than the ones it names. Shapes only, so it runs under jit."""
    for name, shared in field_shapes(config).items():
        shape = tuple(jnp.shape(getattr(iv, name)))
        per_row = shared[:1] + (batch,) + shared[1:]
        if shape not in (shared, per_row):
            raise ValueError(f"iv: Intervention.{name} has shape {shape}; model {config.name!r} needs {shared} "
                             f"(shared by all rows) or {per_row} (one edit per row)")
    for group in GROUPS:
        mask = getattr(iv, f"{group}_mask")
        if mask is not None and not (jnp.ndim(mask) == 1 or (jnp.ndim(mask) == 2 and jnp.shape(mask)[0] == batch)):
            raise ValueError(f"iv: Intervention.{group}_mask has shape {jnp.shape(mask)}; expected [P] or "
                             f"[{batch}, P] (one row per prompt)")


def stack_variants(ivs: Sequence[Intervention]) -> Intervention:
    """Stack interventions on a new leading variant axis (for `jax.vmap`)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *ivs)


def position_selector(where: str, mask: Array | None, positions: Array, valid: Array,
                      t_star: Array) -> Array:
    """Boolean [B, T]: which tokens of this call an edit touches.

    positions: [B, T] position ids; valid: [B, T] non-padding; t_star: [B] position id of t*.
    """
    offset = positions - t_star[:, None]
    if where == "none":
        sel = jnp.zeros_like(valid)
    elif where == "all":
        sel = valid
    elif where == "last":
        sel = valid & (offset == 0)
    elif where == "from_last":
        sel = valid & (offset >= 0)
    else:
        mask = jnp.asarray(mask, bool)
        if mask.ndim == 1:
            mask = jnp.broadcast_to(mask, (positions.shape[0], mask.shape[0]))
        clipped = jnp.clip(positions, 0, mask.shape[1] - 1)
        inside = (positions >= 0) & (positions < mask.shape[1])
        sel = valid & inside & jnp.take_along_axis(mask, clipped, axis=1)
    return sel


def selectors(iv: Intervention, positions: Array, valid: Array, t_star: Array) -> dict[str, Array]:
    """`position_selector` of each group that is on, by group name; groups set to "none" are absent,
    so the forward leaves their operations out."""
    return {group: position_selector(getattr(iv, f"{group}_where"), getattr(iv, f"{group}_mask"), positions,
                                     valid, t_star)
            for group in GROUPS if getattr(iv, f"{group}_where") != "none"}
