"""Where a scan's time goes: the parts of one-token suffix passes, layer by layer, at the scans' shapes.

Every exact scan at t* spends its time in `emojax.scan.suffix` passes: rows of one token going up
the layers over the cached prefix. This benchmark times each part of such a pass alone, in a
`fori_loop` over all layers (so each layer's weights stream in as they do in a scan), at the chunk
shapes the scans run:

    head_scan    n_heads variants x 48 prompts    (one layer's heads are one chunk)
    neuron_scan  768 variants x 8 prompts          (a layer's 1,536 neurons run as two chunks)

Parts: the attention branch (norm, q/k/v, rotary, scores and values over the cached keys, o), its
weight products alone, the MLP branch (norm, gate/up, SiLU, down) and its weight products alone.
Each part's rate is set against the machine's matmul peak measured in the same run; the products'
rates bound what any framework can reach with these kernels at these shapes, so
`ceiling_speedup = pass time / products time` is the most a faster attention or MLP could gain.
No baseline.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from emojax import scan
from emojax.scan.layers import attention_last, last_geometry, layer_attention, layer_params, mlp
from experiments.bench.common import BenchContext, measure_matmul_peak, time_interleaved
from experiments.bench.scan_flops import attention_layer_flops, attention_product_flops, mlp_layer_flops
from experiments.bench.scans import HEAD_PROMPTS, NEURON_PROMPTS, chat_prompts

NEURON_CHUNK = 768
REPEATS = 5


def _over_layers(step: Callable[[dict[str, Any], int, Any], Any], n_layers: int) -> Callable[[Any], Any]:
    """x -> x after `step` of every layer in turn (a small residual update keeps the values sane)."""
    def run(params: dict[str, Any], x: Any) -> Any:
        body = lambda i, x: x + 1e-3 * step(layer_params(params["layers"], i), i, x)
        return jax.lax.fori_loop(0, n_layers, body, x)
    return jax.jit(run)


def _shape_figures(ctx: BenchContext, variants: int, prompts: int, peak: float) -> dict[str, Any]:
    cfg, params = ctx.config, ctx.params
    tokens, mask = chat_prompts(ctx, prompts)
    prefix = scan.capture_prefix(params, tokens, mask, config=cfg)
    geo = last_geometry(prefix.last_pos, prefix.valid, cfg)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(variants, prompts, cfg.d_model)), params["embed"].dtype)

    def attention(p: dict[str, Any], i: Any, x: Any) -> Any:
        cos, sin, allowed = layer_attention(geo, cfg, i)
        one = lambda xv: attention_last(xv, p, prefix.k[i], prefix.v[i], cos, sin, allowed, cfg)[0]
        return jax.vmap(one)(x)

    def attention_products(p: dict[str, Any], i: Any, x: Any) -> Any:
        q, k, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
        return (q + jnp.tile(k + v, (1, 1, cfg.n_heads // cfg.n_kv_heads))) @ p["wo"]

    def mlp_products(p: dict[str, Any], i: Any, x: Any) -> Any:
        return ((x @ p["w_gate"]) * (x @ p["w_up"])) @ p["w_down"]

    parts = {"attention": attention, "attention_products": attention_products,
             "mlp": lambda p, i, x: mlp(x, p, cfg)[0], "mlp_products": mlp_products}
    fns = {name: (lambda f=_over_layers(step, cfg.n_layers): f(params, x)) for name, step in parts.items()}
    timings = time_interleaved(fns, REPEATS)
    rows, context = variants * prompts, prefix.k.shape[2] + 1
    flop = {"attention": attention_layer_flops(cfg, rows, context), "mlp": mlp_layer_flops(cfg, rows),
            "attention_products": attention_product_flops(cfg, rows)}
    flop["mlp_products"] = flop["mlp"]
    out: dict[str, Any] = {"variants": variants, "prompts": prompts, "rows": rows, "context": context}
    for name, timing in timings.items():
        per_layer = timing.median_s / cfg.n_layers
        out[f"{name}_ms_per_layer"] = 1e3 * per_layer
        out[f"{name}_pct_of_peak"] = 100 * flop[name] / per_layer / 1e9 / peak
    layer_s = out["attention_ms_per_layer"] + out["mlp_ms_per_layer"]
    products_s = out["attention_products_ms_per_layer"] + out["mlp_products_ms_per_layer"]
    out["layer_ms"], out["layer_pct_of_peak"] = layer_s, 100 * (flop["attention"] + flop["mlp"]) / layer_s / 1e6 / peak
    out["ceiling_speedup"] = layer_s / products_s
    return out


def bench_suffix_parts(ctx: BenchContext) -> dict[str, Any]:
    """Per-layer time and rate of each part of a suffix pass at the head and neuron scans' shapes."""
    peak = measure_matmul_peak()
    shapes = {"head_scan": (ctx.config.n_heads, ctx.sizes.scan_prompts or HEAD_PROMPTS),
              "neuron_scan": (NEURON_CHUNK, ctx.sizes.scan_prompts or NEURON_PROMPTS)}
    figures = {name: _shape_figures(ctx, v, b, peak) for name, (v, b) in shapes.items()}
    return {"emojax_s": figures["head_scan"]["layer_ms"] * ctx.config.n_layers / 1e3, "matmul_peak_gflops": peak,
            **{f"{scan_name}_{k}": v for scan_name, f in figures.items() for k, v in f.items()}}
