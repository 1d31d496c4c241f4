"""Generation throughput: emojax's compiled decoding against HF `generate`, and the cost of per-row edits.

`generate`: greedy decoding of 32 neutral chat prompts (SEV, bundled test split; random ids of
varied lengths when the model has no tokenizer), 64 new tokens each, emojax against HF PyTorch
`generate` on the same weights, prompts and CPU. Both sides set `min_new_tokens` to the full length,
so every row decodes every step and both do the same work. `products_s` is the same job's weight
products run alone (experiments/bench/bound.py): the least time these kernels need at these shapes.

`generate_steered`: the same emojax generation with a circuit-style per-row intervention (neuron and
head edits in every layer, different for each row, neurons on P_last and heads on P_all as in S7)
against the unsteered emojax run; `speedup` is steered over unsteered throughput (goal >= 0.9).
The generation peers in `ctx.peers` (HF `generate` with per-row hooks, nnsight's `generate`) run
the same edits in the same turns; `peers` holds their times and whether their tokens equal emojax's.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from emojax.data import load_dataset
from emojax.generation.loop import generate_tokens
from emojax.method.prompts import neutral_messages, tokenize_prompts
from emojax.model.interventions import Intervention
from experiments.bench.bound import generation_products_s
from experiments.bench.common import (BenchContext, forward_flops, pct_of_peak, peak_rss_mb, time_call,
                                      time_interleaved, torch_runtime)
from experiments.bench.peers import GENERATION_PEERS, load_peer

BATCH, NEW_TOKENS = 32, 64


def new_tokens(ctx: BenchContext) -> int:
    return ctx.sizes.generate_tokens or NEW_TOKENS


def bench_prompts(ctx: BenchContext) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (tokens, mask) of BATCH prompts (or `ctx.sizes.generate_batch`)."""
    n = ctx.sizes.generate_batch or BATCH
    if ctx.tokenizer is not None:
        records = load_dataset("bundled:test")
        chats = [neutral_messages(r, v) for r in records for v in ("positive", "neutral", "negative")][:n]
        batch = tokenize_prompts(ctx.tokenizer, chats)
        return batch.tokens, batch.mask
    lengths = np.random.default_rng(0).integers(40, 80, n)
    tokens = ctx.tokens(n, int(lengths.max()))
    mask = np.arange(tokens.shape[1])[None] >= (tokens.shape[1] - lengths)[:, None]
    return tokens, mask


def generation_flops(ctx: BenchContext, batch: int, prompt_width: int) -> int:
    """Prefill of the padded prompts, then new_tokens - 1 single-token steps over the growing context."""
    total = forward_flops(ctx.config, batch, prompt_width, logits="last")
    for step in range(1, new_tokens(ctx)):
        total += forward_flops(ctx.config, batch, 1, logits="last", context=prompt_width + step)
    return total


def circuit_style_edits(config: Any, rows: int, seed: int = 0, scale: float = 0.05) -> Intervention:
    """Neuron and head additions in every layer, different for each row (arrays [L, B, ...])."""
    rng = np.random.default_rng(seed)
    L, F, H, Dh = config.n_layers, config.d_ff, config.n_heads, config.head_dim
    iv = Intervention.identity(config, resid_where="none", neuron_where="from_last", head_where="all")
    return iv.replace(neuron_add=jnp.asarray(rng.normal(0, scale, (L, rows, F)), jnp.float32),
                      head_add=jnp.asarray(rng.normal(0, scale, (L, rows, H, Dh)), jnp.float32))


def emojax_generation(ctx: BenchContext, tokens: np.ndarray, mask: np.ndarray,
                      iv: Intervention | None) -> Callable[[], Any]:
    """The benchmark's greedy generation of (tokens, mask) under `iv`, as a call returning the new tokens."""
    params = ctx.params
    dtype = params["embed"].dtype
    if iv is not None:
        iv = jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, iv)
    device_tokens, device_mask = jnp.asarray(tokens), jnp.asarray(mask)
    n = new_tokens(ctx)
    return lambda: generate_tokens(params, device_tokens, device_mask, config=ctx.config,
                                   max_new_tokens=n, min_new_tokens=n, iv=iv).tokens


def _keep_last(fn: Callable[[], Any]) -> tuple[Callable[[], Any], list[Any]]:
    """`fn` wrapped to keep its latest result in the returned list, so timed runs can be compared."""
    last: list[Any] = []

    def run() -> Any:
        last[:] = [fn()]
        return last[0]

    return run, last


def _figures(prefix: str, seconds: float, flop: int, peak: float, generated: int) -> dict[str, float]:
    return {f"{prefix}_tokens_s": generated / seconds, f"{prefix}_gflop_s": flop / seconds / 1e9,
            f"{prefix}_pct_of_peak": pct_of_peak(flop, seconds, peak)}


def bench_generate(ctx: BenchContext) -> dict[str, Any]:
    tokens, mask = bench_prompts(ctx)
    batch, n_new = tokens.shape[0], new_tokens(ctx)
    run, ours_last = _keep_last(emojax_generation(ctx, tokens, mask, None))
    ours = time_call(run, ctx.repeats)
    flop = generation_flops(ctx, batch, tokens.shape[1])
    peak = ctx.matmul_peak_gflops
    result: dict[str, Any] = {
        "emojax_s": ours.median_s, "baseline_s": None, "speedup": None, "batch": batch,
        "new_tokens": n_new, "prompt_width": int(tokens.shape[1]), "gflop": flop / 1e9,
        "matmul_peak_gflop_s": peak, **_figures("emojax", ours.median_s, flop, peak, batch * n_new),
        "emojax_first_call_s": ours.first_s, "emojax_runs_s": list(ours.runs_s),
    }
    # The same job's weight products alone: what the backend's kernels allow at these shapes.
    products = generation_products_s(ctx.params, ctx.config, batch, tokens.shape[1], n_new, ctx.repeats)
    result.update(products)
    result["products_pct_of_limit"] = pct_of_peak(flop, products["products_s"], peak)
    result["emojax_pct_of_products"] = 100 * products["products_s"] / ours.median_s
    if ctx.baseline:
        import torch

        model = ctx.torch_model
        eos = list(ctx.config.eos_token_ids) or None
        ids = torch.from_numpy(tokens.astype(np.int64)).to(ctx.baseline_device)
        attention = torch.from_numpy(mask.astype(np.int64)).to(ctx.baseline_device)

        @ctx.torch_call
        def hf_generate():
            with torch.inference_mode():
                return model.generate(ids, attention_mask=attention, max_new_tokens=n_new,
                                      min_new_tokens=n_new, do_sample=False, eos_token_id=eos,
                                      pad_token_id=0)[:, tokens.shape[1]:]

        hf_run, hf_last = _keep_last(hf_generate)
        theirs = time_call(hf_run, ctx.repeats)
        same = np.array_equal(np.asarray(ours_last[0]), hf_last[0].cpu().numpy())
        result.update({
            "baseline_s": theirs.median_s, "speedup": theirs.median_s / ours.median_s,
            **_figures("baseline", theirs.median_s, flop, peak, batch * n_new),
            "baseline_runs_s": list(theirs.runs_s), "same_tokens_as_baseline": bool(same),
            "baseline": torch_runtime(model.config._attn_implementation, call="generate", device=ctx.baseline_device),
        })
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def steered_peers(ctx: BenchContext, tokens: np.ndarray, mask: np.ndarray,
                   iv: Intervention) -> dict[str, tuple[Callable[[], Any], str]]:
    """The generation peers of `ctx.peers`, each running the same per-row edits as `iv`."""
    names = [n for n in ctx.peers if n in GENERATION_PEERS]
    if not names:
        return {}
    layers, rows = iv.head_add.shape[:2]
    neuron_add = np.array(iv.neuron_add, np.float32)  # writable copies, as torch wants them
    head_add = np.array(iv.head_add, np.float32).reshape(layers, rows, -1)
    return {n: load_peer(GENERATION_PEERS[n])(ctx, tokens, mask, neuron_add, head_add, new_tokens(ctx))
            for n in names}


def bench_generate_steered(ctx: BenchContext) -> dict[str, Any]:
    """emojax's generation with per-row edits against itself unsteered (`speedup`, goal >= 0.9)
    and against the generation peers running the same edits (`peers`, same tokens checked)."""
    tokens, mask = bench_prompts(ctx)
    batch, n_new = tokens.shape[0], new_tokens(ctx)
    steered_iv = circuit_style_edits(ctx.config, batch)
    steered_run, ours_last = _keep_last(emojax_generation(ctx, tokens, mask, steered_iv))
    peers = steered_peers(ctx, tokens, mask, steered_iv)
    peer_runs = {name: _keep_last(run) for name, (run, _) in peers.items()}
    plain_run, plain_last = _keep_last(emojax_generation(ctx, tokens, mask, None))
    timings = time_interleaved({"plain": plain_run, "steered": steered_run,
                                **{name: run for name, (run, _) in peer_runs.items()}}, ctx.repeats)
    plain, steered = timings["plain"], timings["steered"]
    flop = generation_flops(ctx, batch, tokens.shape[1])
    peak = ctx.matmul_peak_gflops
    ours = np.asarray(ours_last[0])
    peer_figures = {}
    for name, (_, last) in peer_runs.items():
        theirs = np.asarray(last[0])
        peer_figures[name] = {"seconds": timings[name].median_s, "ratio_to_emojax": timings[name].median_s / steered.median_s,
                              "same_tokens": bool(np.array_equal(ours, theirs)),
                              "token_agreement": float(np.mean(ours == theirs)), "runs_s": list(timings[name].runs_s),
                              "first_call_s": timings[name].first_s, "description": peers[name][1]}
    return {
        "emojax_s": steered.median_s, "baseline_s": plain.median_s, "speedup": plain.median_s / steered.median_s,
        "baseline": "the same emojax generation without intervention", "batch": batch, "new_tokens": n_new,
        "matmul_peak_gflop_s": peak, **_figures("emojax", steered.median_s, flop, peak, batch * n_new),
        "unsteered_tokens_s": batch * n_new / plain.median_s, "peers": peer_figures,
        "tokens_changed_by_steering": float(np.mean(ours != np.asarray(plain_last[0]))),
        "emojax_runs_s": list(steered.runs_s), "baseline_runs_s": list(plain.runs_s), "peak_rss_mb": peak_rss_mb(),
    }


# The names experiments/bench/benchmark.py registers.
generate = bench_generate
generate_steered = bench_generate_steered
