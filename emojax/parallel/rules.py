"""Logical axis names for the arrays emojax shards, and the rules that place them on a mesh.

Every array dimension carries a logical name saying what it is ('embed', 'mlp', 'q_heads'); where
it lives on the devices is a separate, ordered table of rules (logical name -> mesh axes), so a
different parallelism is a change of configuration, never of code (the MaxText pattern).

Default placement (design.md §7): the batch and variant axes over 'data'; query heads, kv heads
and the MLP width over 'model' (Megatron-style tensor parallelism); everything else replicated.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from absl import logging
from jax.sharding import Mesh, PartitionSpec

from emojax.model.config import ModelConfig
from emojax.model.kv_cache import KVCache

MESH_AXES = ("data", "model")

LogicalAxes = tuple[str | None, ...]
MeshAxes = tuple[str, ...]
Rules = tuple[tuple[str, MeshAxes], ...]

# The parameter layout of emojax/model/params.py, one name per dimension. Every family shares it; the
# q/k/v biases (qwen2) join when config.qkv_bias, q/k norms when config.qk_norm, the post-sublayer norms
# when config.post_norms, and lm_head only when embeddings are untied.
_LAYER_PARAM_AXES: dict[str, LogicalAxes] = {
    "attn_norm": ("layers", "norm"),
    "mlp_norm": ("layers", "norm"),
    "wq": ("layers", "embed", "q_heads"),
    "wk": ("layers", "embed", "kv_heads"),
    "wv": ("layers", "embed", "kv_heads"),
    "wo": ("layers", "q_heads", "embed"),
    "w_gate": ("layers", "embed", "mlp"),
    "w_up": ("layers", "embed", "mlp"),
    "w_down": ("layers", "mlp", "embed"),
}
_QK_NORM_AXES: dict[str, LogicalAxes] = {"q_norm": ("layers", "head_dim"), "k_norm": ("layers", "head_dim")}
_POST_NORM_AXES: dict[str, LogicalAxes] = {"attn_post_norm": ("layers", "norm"), "mlp_post_norm": ("layers", "norm")}
_BIAS_AXES: dict[str, LogicalAxes] = {
    "bq": ("layers", "q_heads"),
    "bk": ("layers", "kv_heads"),
    "bv": ("layers", "kv_heads"),
}

# The main activations of the forward pass (model.py) and the KV cache (kv_cache.py).
ACTIVATION_AXES: dict[str, LogicalAxes] = {
    "tokens": ("batch", "length"),                    # tokens, mask, positions
    "resid": ("batch", "length", "embed"),            # resid_pre/mid/post, attn_out, mlp_out, final
    "q": ("batch", "length", "q_heads", "head_dim"),
    "kv": ("batch", "length", "kv_heads", "head_dim"),
    "z": ("batch", "length", "q_heads"),              # query heads concatenated, o_proj input
    "g": ("batch", "length", "mlp"),                  # post-SwiGLU, down_proj input
    "logits": ("batch", "length", "vocab"),
    "cache_kv": ("layers", "batch", "cache_slots", "kv_heads", "head_dim"),  # KVCache.k / .v
    "cache_valid": ("batch", "cache_slots"),                                 # KVCache.valid
    "cache_rows": ("batch",),                                                # .next_pos, .t_star
    "variant_logits": ("variants", "batch", "length", "vocab"),  # a vmapped sweep's output
}

DEFAULT_RULES: Rules = (
    ("batch", ("data",)),
    ("variants", ("data",)),
    ("q_heads", ("model",)),
    ("kv_heads", ("model",)),
    ("mlp", ("model",)),
)


def param_logical_axes(config: ModelConfig) -> dict[str, Any]:
    """Logical axes of every parameter, in the same tree as `emojax.model.params.param_shapes(config)`."""
    layers = dict(_LAYER_PARAM_AXES)
    if config.qkv_bias:
        layers.update(_BIAS_AXES)
    if config.qk_norm:
        layers.update(_QK_NORM_AXES)
    if config.post_norms:
        layers.update(_POST_NORM_AXES)
    axes: dict[str, Any] = {"embed": ("vocab", "embed"), "final_norm": ("norm",), "layers": layers}
    if not config.tie_embeddings:
        axes["lm_head"] = ("embed", "vocab")
    return axes


def kv_cache_logical_axes() -> KVCache:
    """Logical axes of every KVCache field, as a KVCache (maps with `maybe_shard(cache, ...)`)."""
    rows = ACTIVATION_AXES["cache_rows"]
    return KVCache(k=ACTIVATION_AXES["cache_kv"], v=ACTIVATION_AXES["cache_kv"],
                   valid=ACTIVATION_AXES["cache_valid"], length=(), next_pos=rows, t_star=rows)


def _mesh_axes(value: Any, where: str) -> MeshAxes:
    """Normalise one rule's target: None/'none'/'' -> (), 'data' -> ('data',), 'data+model' or a
    sequence -> a tuple; reject names that are not mesh axes."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [] if value.strip().lower() in ("", "none") else value.split("+")
    axes = tuple(str(a).strip() for a in value)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
        raise ValueError(f"{where}: unknown mesh axis {unknown}; mesh axes are {MESH_AXES}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{where}: mesh axis repeated in {axes}")
    return axes


def rules_from_config(overrides: str | Mapping[str, Any] | None = None,
                      base: Rules = DEFAULT_RULES) -> Rules:
    """`base` with some logical names re-mapped, e.g. from a flag.

    overrides: "mlp=none,vocab=model,batch=data+model" or {"mlp": None, "vocab": "model"}.
    A name mapped to none is replicated; a name absent from the rules is replicated too.
    """
    if not overrides:
        return base
    if isinstance(overrides, str):
        pairs = []
        for item in (s.strip() for s in overrides.split(",")):
            if not item:
                continue
            if item.count("=") != 1:
                raise ValueError(f"sharding rules: {item!r} is not of the form logical_name=mesh_axes")
            name, target = (s.strip() for s in item.split("="))
            pairs.append((name, target))
    else:
        pairs = list(overrides.items())
    changed = {name: _mesh_axes(target, f"sharding rule {name!r}") for name, target in pairs}
    kept = tuple((name, axes) for name, axes in base if name not in changed)
    return kept + tuple(changed.items())


def rules_to_text(rules: Rules) -> str:
    """The inverse of `rules_from_config` for a manifest: 'batch=data,mlp=model,...'."""
    return ",".join(f"{name}={'+'.join(axes) or 'none'}" for name, axes in rules)


def rules_under_vmap(rules: Rules = DEFAULT_RULES, logical_axis: str = "variants") -> Rules:
    """Rules for code inside a `sharded_vmap` over `logical_axis`: the mesh axes that the mapped
    axis holds are taken, so no inner dimension may ask for them (JAX rejects such constraints)."""
    taken = set(dict(rules).get(logical_axis, ()))
    return tuple((name, tuple(a for a in axes if a not in taken)) for name, axes in rules)


def logical_to_spec(axes: Sequence[str | None], rules: Rules = DEFAULT_RULES, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """The PartitionSpec for an array whose dimensions have these logical names.

    A mesh axis shards at most one dimension of an array (the first that asks for it). Given the
    mesh and `shape` (the size of each dimension, or its count of indivisible units such as
    heads), a dimension that the mesh axes do not divide drops its trailing mesh axes until they
    do (replicated at worst), with a warning, instead of failing the placement.
    """
    table = dict(rules)
    used: set[str] = set()
    spec: list[MeshAxes | str | None] = []
    for dim, name in enumerate(axes):
        target = tuple(a for a in table.get(name, ()) if a not in used) if name else ()
        if mesh is not None:
            target = tuple(a for a in target if a in mesh.shape)
        if mesh is not None and shape is not None and target:
            wanted = target
            while target and shape[dim] % math.prod(mesh.shape[a] for a in target):
                target = target[:-1]
            if target != wanted:
                logging.warning("dimension %d (%s): %d units are not divisible over mesh axes %s; "
                                "sharding it over %s instead", dim, name, shape[dim], wanted, target or "none")
        used.update(target)
        spec.append(None if not target else target[0] if len(target) == 1 else target)
    return PartitionSpec(*spec)
