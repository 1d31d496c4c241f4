"""Scale-out with JAX's own sharding: a ('data', 'model') mesh, logical axis rules, placement."""
from emojax.parallel.mesh import make_mesh, mesh_from_spec
from emojax.parallel.rules import (ACTIVATION_AXES, DEFAULT_RULES, MESH_AXES, Rules, kv_cache_logical_axes,
                                   logical_to_spec, param_logical_axes, rules_from_config, rules_to_text,
                                   rules_under_vmap)
from emojax.parallel.shard import (leading_multiple, maybe_shard, named_sharding, param_shardings, place_rows,
                                   row_multiple, shard_batch, shard_leading, shard_params, shard_variants,
                                   sharded_vmap, to_host, unpad)

__all__ = [
    "ACTIVATION_AXES", "DEFAULT_RULES", "MESH_AXES", "Rules", "kv_cache_logical_axes",
    "leading_multiple", "logical_to_spec", "make_mesh", "maybe_shard", "mesh_from_spec", "named_sharding",
    "param_logical_axes", "param_shardings", "place_rows", "row_multiple", "rules_from_config",
    "rules_to_text", "rules_under_vmap", "shard_batch", "shard_leading", "shard_params", "shard_variants",
    "sharded_vmap", "to_host", "unpad",
]
