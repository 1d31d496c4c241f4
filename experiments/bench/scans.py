"""The exact scans against the tools a researcher would use instead (experiments/bench/peers.py).

    bench_head_scan(ctx)                  every head zeroed at t*, final-layer read-out, 48 prompts
    bench_head_scan_all_positions(ctx)    the same with each head zeroed at every position
    bench_neuron_scan(ctx)                every neuron zeroed at t*, 8 prompts
    bench_sublayer_scan(ctx)              every sublayer x 4 alphas injected at t* (S6d), 48 prompts

emojax runs the scan end to end (prefix capture included) from `emojax.scan`. Each peer in
`ctx.peers` runs the same variants its own fastest way: `hf_hooks` is what the official code does,
batched over the prompts (install a hook, run one full forward of the prompt batch, read
<h_final[t*], v>, remove the hook); `hf_batched`, `nnsight` and `transformer_lens` fold many
variants into one forward; `hf_prefix` caches the prefix once and runs each variant as a one-token
suffix from its layer upward. A peer's time is measured on a sample of the variants and scaled to
the full scan (`experiments.bench.peers.time_scan`), emojax and the peers taking turns; each peer's
sampled effects are compared with emojax's (`max_abs_diff`).

Every benchmark writes `peers: {name: {"seconds", "max_abs_diff", ...}}` beside `emojax_s`, and,
as before, `baseline_s`, `speedup` and `max_abs_effect_diff` for `hf_hooks` when it ran.

Prompts are neutral chat prompts of the bundled SEV split rendered with the model's chat template
(~60 tokens, left-padded), or random tokens of 40-60 ids, left-padded to 60, for random weights.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from emojax import scan
from emojax.data.sev import VALENCES, load_dataset
from emojax.method.prompts import neutral_messages, tokenize_prompts
from experiments.bench.common import BenchContext, measure_matmul_peak, pct_of_peak, peak_rss_mb
from experiments.bench.peer_common import Edit, ScanJob
from experiments.bench.peers import time_scan
from experiments.bench.scan_flops import full_forward_scan_flops, suffix_scan_flops

HEAD_PROMPTS, NEURON_PROMPTS, SUBLAYER_PROMPTS = 48, 8, 48
ALPHAS = (0.1, 0.3, 0.5, 0.7)
RANDOM_PROMPT_LENGTH = 60
MAX_REPEATS = 3  # the scans take seconds to minutes; a few runs give a stable median


# --- shared pieces -----------------------------------------------------------------------------------

def chat_prompts(ctx: BenchContext, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n left-padded neutral chat prompts (tokens, mask)."""
    if ctx.tokenizer is None:
        tokens = ctx.tokens(n, RANDOM_PROMPT_LENGTH)
        lengths = np.random.default_rng(1).integers(2 * RANDOM_PROMPT_LENGTH // 3, RANDOM_PROMPT_LENGTH + 1, n)
        return tokens, np.arange(RANDOM_PROMPT_LENGTH)[None] >= (RANDOM_PROMPT_LENGTH - lengths)[:, None]
    records = load_dataset("bundled:train")
    messages = [neutral_messages(r, v) for r in records for v in VALENCES][:n]
    batch = tokenize_prompts(ctx.tokenizer, messages)
    return batch.tokens, batch.mask


def unit_readout(ctx: BenchContext, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=ctx.config.d_model)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _prompts(ctx: BenchContext, default: int) -> int:
    return ctx.sizes.scan_prompts or default


def _compile(warmup: Callable[[], Any]) -> float:
    """Compile with a cheap `warmup` (the same chunk shapes on one layer); its wall time."""
    start = time.perf_counter()
    jax.block_until_ready(warmup())
    return time.perf_counter() - start


def _peer_flops(ctx: BenchContext, batching: str, edits: Sequence[Edit], tokens: np.ndarray) -> int:
    """FLOPs of the whole scan run the way a peer's `batching` names."""
    prompts, width = tokens.shape
    if batching == "suffix":
        return suffix_scan_flops(ctx.config, edits, prompts, width, whole_edited_layer=True)
    return full_forward_scan_flops(ctx.config, len(edits), prompts, width)


def _rates(ctx: BenchContext, emojax_s: float, peers: dict[str, dict[str, Any]], edits: Sequence[Edit],
           tokens: np.ndarray) -> dict[str, Any]:
    """Each side's FLOPs, GFLOP/s and percent of the matmul peak (measured now, after the runs), so
    a ratio splits into work done (FLOPs) and the rate it was done at. Suffix-pass FLOPs only where
    every variant ran as one (`positions="all"` recomputes whole sequences and is not counted)."""
    if any(e.all_positions for e in edits):
        return {}
    peak = measure_matmul_peak()
    flop = suffix_scan_flops(ctx.config, edits, *tokens.shape)
    for peer in peers.values():
        if peer.get("seconds") is not None:
            peer["gflop"] = _peer_flops(ctx, peer["batching"], edits, tokens) / 1e9
            peer["gflops_per_s"] = peer["gflop"] / peer["seconds"]
            peer["pct_of_peak"] = pct_of_peak(peer["gflop"] * 1e9, peer["seconds"], peak)
    return {"emojax_gflop": flop / 1e9, "emojax_gflops_per_s": flop / emojax_s / 1e9,
            "emojax_pct_of_peak": pct_of_peak(flop, emojax_s, peak), "matmul_peak_gflops": peak}


def _result(ctx: BenchContext, emojax_s: float, figures: dict[str, Any], peers: dict[str, dict[str, Any]],
            ours: np.ndarray, edits: Sequence[Edit], tokens: np.ndarray) -> dict[str, Any]:
    """emojax's figures, every peer's (with its ratio to emojax and its rate), and, as before,
    `baseline_s`, `speedup` and `max_abs_effect_diff` for the one-forward-per-variant HF baseline."""
    for peer in peers.values():
        if peer.get("seconds") is not None:
            peer["ratio_to_emojax"] = peer["seconds"] / emojax_s
    hooks = peers.get("hf_hooks", {})
    result = {"emojax_s": emojax_s, **figures, **_rates(ctx, emojax_s, peers, edits, tokens),
              "baseline_s": hooks.get("seconds"), "speedup": hooks.get("ratio_to_emojax"), "peers": peers,
              "effect_scale": float(np.nanmax(np.abs(ours))), "peak_rss_mb": peak_rss_mb()}
    if hooks.get("seconds") is not None:
        result.update(max_abs_effect_diff=hooks["max_abs_diff"], baseline=hooks["description"],
                      baseline_per_variant_s=hooks["sample_s"] / hooks["sampled"],
                      baseline_sampled=hooks["sampled"], baseline_extrapolated=hooks["extrapolated"])
    return result


# --- heads -------------------------------------------------------------------------------------------

def head_edits(config: Any, all_positions: bool = False) -> list[Edit]:
    dh = config.head_dim
    return [Edit(layer, "head_in", head * dh, (head + 1) * dh, all_positions=all_positions)
            for layer in range(config.n_layers) for head in range(config.n_heads)]


def _head_scan(ctx: BenchContext, positions: str, n_prompts: int) -> dict[str, Any]:
    cfg = ctx.config
    tokens, mask = chat_prompts(ctx, n_prompts)
    readout = unit_readout(ctx)

    def run(layers: Sequence[int] | None = None) -> np.ndarray:
        prefix = scan.capture_prefix(ctx.params, tokens, mask, config=cfg, keep_sequence=positions == "all")
        return jax.block_until_ready(scan.causal_head_scan(ctx.params, prefix, readout, config=cfg,
                                                           positions=positions, layers=layers).effect)

    warmup_s = _compile(lambda: run([cfg.n_layers - 1]))
    edits = head_edits(cfg, all_positions=positions == "all")
    flatten = lambda effect: np.asarray(effect).reshape(len(edits), -1)
    runs, last, memory, peers = time_scan(ctx, run, flatten, ScanJob(tokens, mask, readout), edits,
                                          min(ctx.repeats, MAX_REPEATS))
    figures = {"emojax_warmup_s": warmup_s, "emojax_runs_s": runs, **memory, "prompts": n_prompts,
               "prompt_tokens": int(tokens.shape[1]), "positions": positions, "variants": len(edits)}
    return _result(ctx, float(np.median(runs)), figures, peers, flatten(last), edits, tokens)


def bench_head_scan(ctx: BenchContext, n_prompts: int | None = None) -> dict[str, Any]:
    """Every head zeroed at t* (one-token suffix passes) against the peers."""
    return _head_scan(ctx, "last", n_prompts or _prompts(ctx, HEAD_PROMPTS))


def bench_head_scan_all_positions(ctx: BenchContext, n_prompts: int | None = None) -> dict[str, Any]:
    """Every head zeroed at every position (recompute from its layer) against the peers that allow it."""
    return _head_scan(ctx, "all", n_prompts or _prompts(ctx, HEAD_PROMPTS))


# --- neurons -----------------------------------------------------------------------------------------

def bench_neuron_scan(ctx: BenchContext, n_prompts: int | None = None,
                      layers: Sequence[int] | None = None) -> dict[str, Any]:
    """The exhaustive causal neuron scan (every neuron zeroed at t*) against the peers.

    `layers` (default `ctx.sizes.neuron_layers`, else all) restricts the emojax scan to a subset
    for a quick estimate; the full-scan time is then extrapolated by suffix length (layers above
    each scanned layer) and flagged. Peers sample their variants from the scanned layers and are
    scaled to the full scan."""
    cfg = ctx.config
    n_prompts = n_prompts or _prompts(ctx, NEURON_PROMPTS)
    tokens, mask = chat_prompts(ctx, n_prompts)
    readout = unit_readout(ctx)
    layers = layers if layers is not None else ctx.sizes.neuron_layers
    scanned = list(range(cfg.n_layers)) if layers is None else sorted(layers)

    def run() -> np.ndarray:
        prefix = scan.capture_prefix(ctx.params, tokens, mask, config=cfg)
        return jax.block_until_ready(scan.causal_neuron_scan(ctx.params, prefix, readout, config=cfg,
                                                             layers=scanned).effect)

    def warmup() -> Any:
        prefix = scan.capture_prefix(ctx.params, tokens, mask, config=cfg)
        return scan.causal_neuron_scan(ctx.params, prefix, readout, config=cfg, layers=[cfg.n_layers - 1]).effect

    warmup_s = _compile(warmup)
    edits = [Edit(layer, "neuron_in", j, j + 1) for layer in range(cfg.n_layers) for j in range(cfg.d_ff)]
    candidates = [layer * cfg.d_ff + j for layer in scanned for j in range(cfg.d_ff)]

    def spread_out(effect: Any) -> np.ndarray:
        """emojax's effects [scanned layers, F, B] at their indices of the full scan (NaN elsewhere)."""
        full = np.full((len(edits), n_prompts), np.nan, np.float32)
        full[candidates] = np.asarray(effect).reshape(len(candidates), -1)
        return full

    runs, last, memory, peers = time_scan(ctx, run, spread_out, ScanJob(tokens, mask, readout), edits, 1, candidates)
    measured = runs[0]
    suffix_layers = lambda ls: sum(cfg.n_layers - l for l in ls)  # layers l+1..L-1 plus the read-out
    figures = {"emojax_measured_s": measured, "emojax_layers_scanned": len(scanned),
               "emojax_extrapolated": len(scanned) < cfg.n_layers, "emojax_warmup_s": warmup_s, **memory,
               "prompts": n_prompts, "prompt_tokens": int(tokens.shape[1]), "variants": len(edits)}
    emojax_s = measured * suffix_layers(range(cfg.n_layers)) / suffix_layers(scanned)
    return _result(ctx, emojax_s, figures, peers, spread_out(last), edits, tokens)


# --- sublayers ---------------------------------------------------------------------------------------

def bench_sublayer_scan(ctx: BenchContext, n_prompts: int | None = None) -> dict[str, Any]:
    """S6d: every sublayer x alpha injected at t* (suffix passes) against the peers. Directions are
    random unit vectors; sigma is the prompts' own RMS at t*."""
    cfg = ctx.config
    n_prompts = n_prompts or _prompts(ctx, SUBLAYER_PROMPTS)
    tokens, mask = chat_prompts(ctx, n_prompts)
    readout = unit_readout(ctx)
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(2, cfg.n_layers, cfg.d_model))
    directions = (directions / np.linalg.norm(directions, axis=-1, keepdims=True)).astype(np.float32)
    probe = scan.capture_prefix(ctx.params, tokens, mask, config=cfg)
    rms = lambda x: np.sqrt(np.mean(np.square(np.asarray(x)), axis=-1)).mean(axis=0)
    sigma = np.stack([rms(probe.resid_mid), rms(probe.resid_post)]).astype(np.float32)

    def run() -> scan.Influence:
        prefix = scan.capture_prefix(ctx.params, tokens, mask, config=cfg)
        return jax.block_until_ready(scan.sublayer_influence(ctx.params, prefix, directions, sigma, ALPHAS,
                                                             readout, config=cfg))

    warmup_s = _compile(lambda: scan.suffix_scores(ctx.params, probe, np.zeros((len(ALPHAS), cfg.d_model), np.float32),
                                                   layer=cfg.n_layers - 1, sublayer="mlp", readout=readout,
                                                   config=cfg))
    # Variant order of `sublayer_influence`: [site, layer, alpha], site 0 the attention output.
    edits = [Edit(layer, ("attn_out", "mlp_out")[site],
                  vector=(alpha * sigma[site, layer] * directions[site, layer]).astype(np.float32))
             for site in range(2) for layer in range(cfg.n_layers) for alpha in ALPHAS]
    effects = lambda influence: np.asarray(influence.perturbed - influence.base).reshape(len(edits), -1)
    runs, last, memory, peers = time_scan(ctx, run, effects, ScanJob(tokens, mask, readout), edits,
                                          min(ctx.repeats, MAX_REPEATS))
    figures = {"emojax_warmup_s": warmup_s, "emojax_runs_s": runs, **memory, "prompts": n_prompts,
               "prompt_tokens": int(tokens.shape[1]), "alphas": list(ALPHAS), "variants": len(edits)}
    return _result(ctx, float(np.median(runs)), figures, peers, effects(last), edits, tokens)
