"""Prefill: one forward over a batch of prompts, emojax against HF PyTorch on the same weights.

`prefill` returns the logits of every position, `prefill_last` only those of the last position
(emojax `logits="last"`, HF `logits_to_keep=1`). Both sides run on the same CPU, one run at a time,
taking turns so that a change in machine load affects both alike.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from emojax import forward
from experiments.bench.bound import prefill_products_s
from experiments.bench.common import (BenchContext, forward_flops, measure_matmul_peak, pct_of_peak, peak_rss_mb,
                                      time_interleaved, torch_runtime)

BATCH, SEQ = 16, 128


def paired_fraction_of_peak(run: Callable[[], Any], flop: int, repeats: int) -> float:
    """Median over back-to-back pairs of (forward GFLOP/s) / (matmul GFLOP/s): on a machine whose
    load changes while it is measured, each pair sees about the same share of the CPU."""
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        achieved = flop / (time.perf_counter() - start) / 1e9
        ratios.append(achieved / measure_matmul_peak(repeats=1))
    return statistics.median(ratios)


def _prefill(ctx: BenchContext, logits: str) -> dict[str, Any]:
    tokens = ctx.tokens(BATCH, SEQ)
    device_tokens = jnp.asarray(tokens)
    run = lambda: forward(ctx.params, device_tokens, config=ctx.config, logits=logits).logits
    fns = {"emojax": run}
    if ctx.baseline:
        import torch

        model = ctx.torch_model
        torch_tokens = torch.from_numpy(tokens.astype(np.int64)).to(ctx.baseline_device)

        @ctx.torch_call
        def hf_run():
            with torch.inference_mode():
                return model(input_ids=torch_tokens, use_cache=False,
                             logits_to_keep=1 if logits == "last" else 0).logits
        fns["baseline"] = hf_run
    timings = time_interleaved(fns, ctx.repeats)
    ours = timings["emojax"]
    flop = forward_flops(ctx.config, BATCH, SEQ, logits=logits)
    peak = ctx.matmul_peak_gflops
    result: dict[str, Any] = {
        "emojax_s": ours.median_s, "baseline_s": None, "speedup": None,
        "batch": BATCH, "seq": SEQ, "logits": logits, "gflop": flop / 1e9,
        "emojax_gflop_s": flop / ours.median_s / 1e9, "matmul_peak_gflop_s": peak,
        "emojax_pct_of_peak": pct_of_peak(flop, ours.median_s, peak),
        "emojax_pct_of_paired_peak": 100 * paired_fraction_of_peak(run, flop, ctx.repeats),
        "emojax_tokens_s": BATCH * SEQ / ours.median_s, "emojax_first_call_s": ours.first_s,
        "emojax_runs_s": list(ours.runs_s),
    }
    # The same forward's weight products alone: what the backend's kernels allow at these shapes.
    products = prefill_products_s(ctx.params, ctx.config, BATCH, SEQ, logits, ctx.repeats)
    result.update({"products_s": products, "products_pct_of_peak": pct_of_peak(flop, products, peak),
                   "emojax_pct_of_products": 100 * products / ours.median_s})
    if ctx.baseline:
        theirs = timings["baseline"]
        diff = np.abs(np.asarray(jax.device_get(run()), np.float32) - hf_run().float().cpu().numpy()).max()
        result.update({
            "baseline_s": theirs.median_s, "speedup": theirs.median_s / ours.median_s,
            "baseline_gflop_s": flop / theirs.median_s / 1e9, "baseline_runs_s": list(theirs.runs_s),
            "max_abs_logit_diff": float(diff),
            "baseline": torch_runtime(model.config._attn_implementation, device=ctx.baseline_device),
        })
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def bench_prefill(ctx: BenchContext) -> dict[str, Any]:
    return _prefill(ctx, "all")


def bench_prefill_last(ctx: BenchContext) -> dict[str, Any]:
    return _prefill(ctx, "last")
