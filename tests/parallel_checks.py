"""Sharded-versus-single-device checks on 8 host devices, run by tests/test_parallel.py in a
subprocess (XLA_FLAGS must force the device count before JAX starts).

Usage (emojax installed, or PYTHONPATH=. from the repository root):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_checks.py [check ...]
Prints one JSON object per check: {"check": name, "max_abs_diff": ..., other facts}.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from emojax import Intervention, KVCache, TapSpec, forward, parallel, stack_variants
from emojax.model.config import ModelConfig
from emojax.model.params import param_shapes

CHECKS: dict[str, Callable[[], dict[str, Any]]] = {}


def check(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    CHECKS[fn.__name__] = fn
    return fn


def tiny_config(**changes: Any) -> ModelConfig:
    base = dict(family="llama", vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                d_ff=64, rms_eps=1e-6, rope_theta=10000.0, tie_embeddings=True, qkv_bias=False)
    return ModelConfig(**{**base, **changes})


def numpy_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.05) -> dict[str, Any]:
    """Random weights drawn on the host (no per-shape compiles, the same bits under any XLA options),
    norms near 1, other weights of standard deviation `scale`."""
    rng = np.random.default_rng(seed)
    shapes = param_shapes(cfg)

    def draw(path: tuple, shape: tuple[int, ...]) -> np.ndarray:
        is_norm = "norm" in jax.tree_util.keystr(path)
        return ((1.0 if is_norm else 0.0) + (0.1 if is_norm else scale) * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes, is_leaf=lambda x: isinstance(x, tuple))


def left_padded_batch(cfg: ModelConfig, rows: int, length: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (rows, length)).astype(np.int32)
    mask = np.ones((rows, length), bool)
    for row in range(rows):
        mask[row, : row % 4] = False
    return tokens, mask


def max_diff(a: Any, b: Any) -> float:
    def diff(x: Any, y: Any) -> float:
        x, y = np.asarray(x), np.asarray(y)
        return float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0))

    diffs = jax.tree_util.tree_map(diff, a, b)
    return max(jax.tree_util.tree_leaves(diffs))


def spec(a: jax.Array) -> str:
    return str(a.sharding.spec)


@check
def forward_model2() -> dict[str, Any]:
    """qwen2-style (q/k/v biases, untied head) on data=4 x model=2; 6 rows padded to 8."""
    cfg = tiny_config(family="qwen2", qkv_bias=True, tie_embeddings=False)
    params = numpy_params(cfg)
    tokens, mask = left_padded_batch(cfg, rows=6, length=9)
    taps = TapSpec(points=("resid_mid", "z", "g", "final"))
    ref = forward(params, tokens, config=cfg, mask=mask, taps=taps)

    mesh = parallel.make_mesh(model=2)
    sharded = parallel.shard_params(params, mesh, cfg)
    batch, n = parallel.shard_batch({"tokens": tokens, "mask": mask}, mesh)
    out = forward(sharded, batch["tokens"], config=cfg, mask=batch["mask"], taps=taps)
    return {"max_abs_diff": max_diff(parallel.unpad((out.logits, out.taps), n), (ref.logits, ref.taps)),
            "padded_rows": int(batch["tokens"].shape[0]), "wq": spec(sharded["layers"]["wq"]),
            "w_down": spec(sharded["layers"]["w_down"]), "bk": spec(sharded["layers"]["bk"]),
            "logits": spec(out.logits)}


@check
def cached_decode_model4() -> dict[str, Any]:
    """Tied llama on data=2 x model=4: prompt prefill into a sharded KV cache, then 2 decode steps."""
    cfg = tiny_config(n_heads=8, n_kv_heads=4, head_dim=4)
    params = numpy_params(cfg, seed=2)
    tokens, mask = left_padded_batch(cfg, rows=3, length=7, seed=3)
    steps = np.random.default_rng(4).integers(0, cfg.vocab_size, (3, 2)).astype(np.int32)

    def run(p: Any, tokens: Any, mask: Any, steps: Any, cache: KVCache) -> list[Any]:
        out = forward(p, tokens, config=cfg, mask=mask, cache=cache, logits="last")
        logits = [out.logits]
        for i in range(steps.shape[1]):
            out = forward(p, steps[:, i:i + 1], config=cfg, cache=out.cache, logits="last")
            logits.append(out.logits)
        return logits + [out.cache.k]

    ref = run(params, tokens, mask, steps, KVCache.empty(cfg, 3, 12))
    mesh = parallel.make_mesh(model=4)
    sharded = parallel.shard_params(params, mesh, cfg)
    batch, n = parallel.shard_batch({"tokens": tokens, "mask": mask, "steps": steps}, mesh)
    cache = parallel.maybe_shard(KVCache.empty(cfg, batch["tokens"].shape[0], 12), mesh,
                                 parallel.kv_cache_logical_axes())
    out = run(sharded, batch["tokens"], batch["mask"], batch["steps"], cache)
    k_ref = ref[-1]
    return {"max_abs_diff": max_diff([o[:n] for o in out[:-1]] + [out[-1][:, :n]], ref[:-1] + [k_ref]),
            "cache_k": spec(cache.k), "w_gate": spec(sharded["layers"]["w_gate"])}


@check
def head_sweep_vmap() -> dict[str, Any]:
    """A vmapped head-zeroing + steering sweep: 10 variants over data=4 (padded to 12), model=2."""
    cfg = tiny_config()
    params = numpy_params(cfg, seed=5)
    tokens, mask = left_padded_batch(cfg, rows=2, length=8, seed=6)
    base = Intervention.identity(cfg, head_where="all", resid_where="from_last")
    steer = np.random.default_rng(7).standard_normal(cfg.d_model).astype(np.float32)
    variants = [base.zero_heads([(layer, head)]) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    variants = variants[:9] + [base.add_resid(1, 0, steer, rms_scaled=True)]
    ivs = stack_variants(variants)

    def one(p: Any, iv: Intervention, mesh: Any, rules: Any) -> Any:
        out = forward(p, tokens, config=cfg, mask=mask, iv=iv, logits="last",
                      taps=TapSpec(points=("resid_post",)))
        return parallel.maybe_shard(out.logits, mesh, parallel.ACTIVATION_AXES["logits"], rules), out.taps

    def sweep(p: Any, ivs: Intervention, mesh: Any) -> Any:
        rules = parallel.rules_under_vmap(parallel.DEFAULT_RULES)
        return parallel.sharded_vmap(lambda iv: one(p, iv, mesh, rules), mesh)(ivs)

    ref = jax.jit(sweep, static_argnums=2)(params, ivs, None)
    mesh = parallel.make_mesh(model=2)
    sharded = parallel.shard_params(params, mesh, cfg)
    placed, n = parallel.shard_variants(ivs, mesh)
    out = jax.jit(sweep, static_argnums=2)(sharded, placed, mesh)
    return {"max_abs_diff": max_diff(parallel.unpad(out, n), ref), "variants": int(placed.head_scale.shape[0]),
            "variant_spread": float(jnp.max(jnp.abs(ref[0] - ref[0][:1]))),
            "head_scale": spec(placed.head_scale), "logits": spec(out[0])}


@check
def head_and_sublayer_scans() -> dict[str, Any]:
    """The exact head scan (one-token suffix passes) and the sublayer influence scan, run from a
    prefix captured on sharded weights (model=2) and prompt rows split over data=4."""
    from emojax import scan

    cfg = tiny_config()
    params = numpy_params(cfg, seed=8)
    tokens, mask = left_padded_batch(cfg, rows=4, length=8, seed=9)
    rng = np.random.default_rng(10)
    readout = rng.standard_normal((4, cfg.d_model)).astype(np.float32)
    directions = rng.standard_normal((2, cfg.n_layers, cfg.d_model)).astype(np.float32)
    sigma = np.ones((2, cfg.n_layers), np.float32)

    def scans(p: Any, tokens: Any, mask: Any) -> Any:
        prefix = scan.capture_prefix(p, tokens, mask, config=cfg)
        heads = scan.causal_head_scan(p, prefix, readout, config=cfg)
        influence = scan.sublayer_influence(p, prefix, directions, sigma, [0.5, 2.0], readout, config=cfg)
        return np.asarray(heads.effect), np.asarray(influence.influence), prefix.k

    ref = scans(params, tokens, mask)
    mesh = parallel.make_mesh(model=2)
    batch, n = parallel.shard_batch({"tokens": tokens, "mask": mask}, mesh)
    assert n == batch["tokens"].shape[0], "4 rows on data=4 need no padding"
    out = scans(parallel.shard_params(params, mesh, cfg), batch["tokens"], batch["mask"])
    return {"max_abs_diff": max_diff(out[:2], ref[:2]), "prefix_k": spec(out[2]),
            "ref_scale": float(max(np.max(np.abs(ref[0])), np.max(np.abs(ref[1])))),
            "effect_spread": float(np.ptp(ref[0]))}


@check
def steered_generation() -> dict[str, Any]:
    """Greedy generation (repetition penalty on) with rms-scaled steering from t* on, weights on
    model=4, rows on data=2 (3 prompts padded to 4)."""
    from emojax.generation.loop import generate_tokens

    cfg = tiny_config(n_heads=8, n_kv_heads=4, head_dim=4, eos_token_ids=(5,))
    params = numpy_params(cfg, seed=11)
    tokens, mask = left_padded_batch(cfg, rows=3, length=6, seed=12)
    steer = np.random.default_rng(13).standard_normal(cfg.d_model).astype(np.float32)
    iv = Intervention.identity(cfg, resid_where="from_last").add_resid(0, 1, 4.0 * steer, rms_scaled=True)
    ref = generate_tokens(params, tokens, mask, config=cfg, max_new_tokens=6, iv=iv,
                          repetition_penalty=1.3)
    plain = generate_tokens(params, tokens, mask, config=cfg, max_new_tokens=6, repetition_penalty=1.3)

    mesh = parallel.make_mesh(model=4)
    batch, n = parallel.shard_batch({"tokens": tokens, "mask": mask}, mesh)
    out = generate_tokens(parallel.shard_params(params, mesh, cfg), batch["tokens"], batch["mask"], config=cfg,
                          max_new_tokens=6, iv=iv, repetition_penalty=1.3)
    out = parallel.unpad(out, n)
    return {"max_abs_diff": max_diff(out, ref), "tokens_equal": bool(np.array_equal(out.tokens, ref.tokens)),
            "steering_changes_tokens": not bool(np.array_equal(plain.tokens, ref.tokens))}


@check
def mesh_arguments() -> dict[str, Any]:
    """The `mesh=` arguments users pass: `generate` (5 prompts in chunks of 2, rounded up to the 4 row
    shards, per-row steering) and `capture_prefix` followed by the head, neuron and sublayer scans
    (8 rows split over data=4 and weights over model=2; 5 rows fall back to replicated rows)."""
    import types

    from emojax import scan
    from emojax.generation.loop import generate

    cfg = tiny_config(eos_token_ids=(5,))
    params = numpy_params(cfg, seed=14)
    mesh = parallel.make_mesh(data=4, model=2)
    rng = np.random.default_rng(15)
    model = types.SimpleNamespace(params=params, config=cfg, tokenizer=None)
    tokens, mask = left_padded_batch(cfg, rows=5, length=7, seed=16)
    steer = np.zeros((cfg.n_layers, 5, 2, cfg.d_model), np.float32)
    steer[1, :, 1] = 3.0 * rng.standard_normal((5, cfg.d_model))
    iv = Intervention.identity(cfg, resid_where="from_last").replace(resid_add_rms=jnp.asarray(steer))
    kwargs = dict(max_new_tokens=5, iv=iv, repetition_penalty=1.2, batch_size=2)
    gen_ref = generate(model, (tokens, mask), **kwargs)
    gen = generate(model, (tokens, mask), mesh=mesh, **kwargs)

    diffs, specs = [], {}
    for rows in (8, 5):
        tokens, mask = left_padded_batch(cfg, rows=rows, length=8, seed=17 + rows)
        readout = rng.standard_normal((rows, cfg.d_model)).astype(np.float32)
        directions = rng.standard_normal((rows, 2, cfg.n_layers, cfg.d_model)).astype(np.float32)
        sigma = np.ones((2, cfg.n_layers), np.float32)

        def scans(prefix: Any) -> tuple[np.ndarray, ...]:
            heads = scan.causal_head_scan(params, prefix, readout, config=cfg)
            neurons = scan.causal_neuron_scan(params, prefix, readout, config=cfg)
            influence = scan.sublayer_influence(params, prefix, directions, sigma, [0.5, 2.0], readout, config=cfg)
            return np.asarray(heads.effect), np.asarray(neurons.effect), np.asarray(influence.influence)

        ref_prefix = scan.capture_prefix(params, tokens, mask, config=cfg)
        ref = scans(ref_prefix)
        prefix = scan.capture_prefix(params, tokens, mask, config=cfg, mesh=mesh)
        specs[f"prefix_k_{rows}_rows"] = spec(prefix.k)
        diffs.append(max_diff(scans(prefix), ref))
        diffs.append(max_diff(scans(ref_prefix.place(mesh)), ref))
    return {"max_abs_diff": max(diffs), "tokens_equal": bool(np.array_equal(gen.tokens, gen_ref.tokens)),
            "rows": int(gen.tokens.shape[0]), **specs}


def main(names: list[str]) -> None:
    if jax.device_count() != 8:
        raise SystemExit(f"expected 8 devices, found {jax.device_count()}: set "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=8 before starting")
    for name in names or list(CHECKS):
        print(json.dumps({"check": name, **CHECKS[name]()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
