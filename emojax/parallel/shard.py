"""Placing parameters, batches and intervention sweeps on a mesh, and reading results back.

Only placement lives here: computation stays the plain jitted functions, and XLA propagates the
input shardings through them (no home-made distribution layer, design.md §7).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from emojax.model.config import ModelConfig
from emojax.model.params import Params, check_params, param_shapes
from emojax.parallel.rules import DEFAULT_RULES, Rules, logical_to_spec, param_logical_axes


def _is_axes(node: Any) -> bool:
    return isinstance(node, tuple) and all(a is None or isinstance(a, str) for a in node)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules: Rules = DEFAULT_RULES,
                   shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh, shape))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """Place one array. On several hosts every host holds the same full value (all of them run the
    same program on the same data) and contributes the shards its own devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def param_shardings(config: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict[str, Any]:
    """A NamedSharding for every parameter (same tree as the params), e.g. for orbax restores.

    Head dimensions (H*Dh, K*Dh wide) are split only on head boundaries: a model axis that does
    not divide the head count leaves them replicated rather than cutting heads in two.
    """
    heads = {"q_heads": config.n_heads, "kv_heads": config.n_kv_heads}

    def sharding(axes: tuple[str | None, ...], shape: tuple[int, ...]) -> NamedSharding:
        units = tuple(heads.get(name, size) for name, size in zip(axes, shape))
        return named_sharding(mesh, axes, rules, units)

    return jax.tree_util.tree_map(sharding, param_logical_axes(config), param_shapes(config), is_leaf=_is_axes)


def shard_params(params: Params, mesh: Mesh, config: ModelConfig, rules: Rules = DEFAULT_RULES) -> Params:
    """Place the parameters by their logical axes: by default heads and MLP width over 'model'."""
    check_params(params, config, source="shard_params")
    return jax.tree_util.tree_map(_put, params, param_shardings(config, mesh, rules))


def leading_multiple(mesh: Mesh, logical_axis: str, rules: Rules = DEFAULT_RULES) -> int:
    """How many shards the leading axis named `logical_axis` is split into on this mesh."""
    spec = logical_to_spec((logical_axis,), rules, mesh)[0]
    names = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(mesh.shape[a] for a in names)


def _pad_leading(x: Any, size: int) -> Any:
    """Grow the leading axis to `size` by repeating the last row: padding rows are real inputs,
    so they cannot produce NaNs or change compiled shapes in surprising ways."""
    extra = size - x.shape[0]
    if extra == 0:
        return x
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.concatenate([x, xp.repeat(x[-1:], extra, axis=0)], axis=0)


def shard_leading(tree: Any, mesh: Mesh, logical_axis: str, rules: Rules = DEFAULT_RULES) -> tuple[Any, int]:
    """Split the leading axis of every array in `tree` over the mesh axes `logical_axis` maps to,
    padding it to a multiple of the shard count; other axes are replicated.

    Returns (placed tree, original leading size); `unpad(result, n)` drops the padding rows.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"shard_leading({logical_axis!r}): every array needs the same leading axis; "
                         f"got leading sizes {sorted(sizes, key=str)}")
    n = sizes.pop()
    multiple = leading_multiple(mesh, logical_axis, rules)
    padded = -(-n // multiple) * multiple
    placed = []
    for leaf in leaves:
        leaf = _pad_leading(leaf, padded)
        axes = (logical_axis,) + (None,) * (np.ndim(leaf) - 1)
        placed.append(_put(leaf, named_sharding(mesh, axes, rules, np.shape(leaf))))
    return jax.tree_util.tree_unflatten(treedef, placed), n


def shard_batch(x: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> tuple[Any, int]:
    """Batch rows (tokens, mask, ... : an array or a pytree of them) over 'data'. Returns
    (placed, n_rows); run the jitted function, then `unpad(out, n_rows)`."""
    return shard_leading(x, mesh, "batch", rules)


def shard_variants(iv: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> tuple[Any, int]:
    """A stacked Intervention sweep (leading variant axis, see `stack_variants`) over 'data'.
    Returns (placed, n_variants); vmap over it, then `unpad(out, n_variants)`."""
    return shard_leading(iv, mesh, "variants", rules)


def place_rows(x: Any, mesh: Mesh, axis: int = 0, rules: Rules = DEFAULT_RULES) -> Any:
    """Place arrays whose axis `axis` holds batch rows: rows over the mesh axes "batch" maps to,
    everything else replicated. No padding: a row count the mesh does not divide falls back to
    fewer mesh axes (replicated at worst, with a warning), so results keep their row count."""
    def place(a: Any) -> jax.Array:
        axes = tuple("batch" if i == axis else None for i in range(np.ndim(a)))
        return _put(a, named_sharding(mesh, axes, rules, np.shape(a)))
    return jax.tree_util.tree_map(place, x)


def row_multiple(mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> int:
    """How many shards batch rows are split into on `mesh` (1 without a mesh)."""
    return 1 if mesh is None else leading_multiple(mesh, "batch", rules)


def unpad(tree: Any, n: int) -> Any:
    """Drop the padding rows `shard_batch` / `shard_variants` added to the leading axis."""
    return jax.tree_util.tree_map(lambda a: a[:n], tree)


def maybe_shard(x: Any, mesh: Mesh | None, logical_axes: Any, rules: Rules = DEFAULT_RULES) -> Any:
    """Ask for a layout by logical names inside (or outside) jit; a no-op when mesh is None.

    `logical_axes` is one tuple of names for every array in `x`, or a pytree of tuples matching
    `x`. Inside a vmapped function use `sharded_vmap` and `rules_under_vmap(rules)`: under a
    plain `jax.vmap` the constraint would pin the mapped axis to "replicated".
    """
    if mesh is None:
        return x

    def constrain(a: Any, axes: Sequence[str | None]) -> Any:
        if len(axes) != np.ndim(a):
            raise ValueError(f"maybe_shard: logical axes {tuple(axes)} do not match an array of shape "
                             f"{np.shape(a)}")
        return jax.lax.with_sharding_constraint(a, named_sharding(mesh, axes, rules, np.shape(a)))

    if _is_axes(logical_axes):
        return jax.tree_util.tree_map(lambda a: constrain(a, logical_axes), x)
    return jax.tree_util.tree_map(lambda axes, a: constrain(a, axes), logical_axes, x, is_leaf=_is_axes)


def sharded_vmap(fn: Callable, mesh: Mesh | None, logical_axis: str = "variants",
                 rules: Rules = DEFAULT_RULES, **vmap_kwargs: Any) -> Callable:
    """`jax.vmap(fn)` whose mapped axis stays split over the mesh axes `logical_axis` maps to, also
    through `maybe_shard` calls inside `fn` (which must then use `rules_under_vmap(rules)`).
    Plain `jax.vmap` when mesh is None."""
    spec = None if mesh is None else logical_to_spec((logical_axis,), rules, mesh)[0]
    if spec is not None:
        vmap_kwargs["spmd_axis_name"] = spec
    return jax.vmap(fn, **vmap_kwargs)


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly sharded) results, complete on every host; write them from the
    primary host only (`emojax.parallel.distributed.is_primary_host`)."""
    def fetch(a: Any) -> np.ndarray:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)
    return jax.tree_util.tree_map(fetch, tree)
