"""The exact scans against HF PyTorch with forward hooks (one hooked forward per variant).

    bench_head_scan(ctx)                  every head zeroed at t*, final-layer read-out, 48 prompts
    bench_head_scan_all_positions(ctx)    the same with each head zeroed at every position
    bench_neuron_scan(ctx)                every neuron zeroed at t*, 8 prompts
    bench_sublayer_scan(ctx)              every sublayer x 4 alphas injected at t* (S6d), 48 prompts

emojax runs the scan end to end (prefix capture included) from `emojax.scan`. The baseline is what
the official code does, batched over the prompts: install a hook, run one full forward of the
prompt batch, read <h_final[t*], v>, remove the hook. Its time is measured on a sample of variants
spread over all layers and scaled to the full count (the cost of a hooked forward does not depend
on which component it edits); `baseline_sampled` says how many were run. The sampled baseline
effects are also compared with emojax's (`max_abs_effect_diff`).

Prompts are neutral chat prompts of the bundled SEV split rendered with the model's chat template
(~60 tokens, left-padded), or random tokens of that length for random-weight configs.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from emojax import scan
from emojax.data.sev import VALENCES, load_dataset
from emojax.prompts import neutral_messages, tokenize_prompts
from experiments.bench_common import BenchContext, peak_rss_mb

HEAD_PROMPTS, NEURON_PROMPTS, SUBLAYER_PROMPTS = 48, 8, 48
ALPHAS = (0.1, 0.3, 0.5, 0.7)
BASELINE_SAMPLE = 16
RANDOM_PROMPT_LENGTH = 60
MAX_REPEATS = 3  # the scans take seconds to minutes; a few runs give a stable median


# --- shared pieces -----------------------------------------------------------------------------------

def chat_prompts(ctx: BenchContext, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n left-padded neutral chat prompts (tokens, mask)."""
    if ctx.tokenizer is None:
        tokens = ctx.tokens(n, RANDOM_PROMPT_LENGTH)
        return tokens, np.ones(tokens.shape, bool)
    records = load_dataset("bundled:train")
    messages = [neutral_messages(r, v) for r in records for v in VALENCES][:n]
    batch = tokenize_prompts(ctx.tokenizer, messages)
    return batch.tokens, batch.mask


def unit_readout(ctx: BenchContext, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=ctx.config.d_model)
    return (v / np.linalg.norm(v)).astype(np.float32)


def sample_indices(n: int, k: int | None) -> np.ndarray:
    """k variant indices spread evenly over range(n) (all of them for k=None)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


class HookedBaseline:
    """HF PyTorch forwards of one prompt batch with a temporary hook, read out at t* on v."""

    def __init__(self, ctx: BenchContext, tokens: np.ndarray, mask: np.ndarray, readout: np.ndarray):
        import torch

        self.torch = torch
        self.model = ctx.torch_model
        self.inputs = {
            "input_ids": torch.from_numpy(tokens.astype(np.int64)),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "position_ids": torch.from_numpy(np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)),
        }
        self.readout = torch.from_numpy(readout)

    @property
    def layers(self) -> Any:
        return self.model.model.layers

    def score(self, module: Any = None, hook: Callable | None = None, pre: bool = False) -> np.ndarray:
        """Scores [B] of one forward with `hook` on `module` (a pre-hook when `pre`)."""
        handle = None
        if module is not None:
            handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
        try:
            with self.torch.inference_mode():
                final = self.model.model(**self.inputs, use_cache=False).last_hidden_state[:, -1]
                return (final @ self.readout).numpy()
        finally:
            if handle is not None:
                handle.remove()

    def description(self) -> str:
        return (f"transformers PyTorch {self.torch.__version__}, float32, {self.model.config._attn_implementation}"
                f" attention, {self.torch.get_num_threads()} threads, one hooked forward per variant")


def run_baseline(baseline: HookedBaseline, n_variants: int, sample: int | None,
                 variant: Callable[[int], tuple[Any, Callable, bool]],
                 n_total: int | None = None) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Time the clean forward and a sample of the n_variants hooked forwards; scale the per-variant
    time to n_total variants (default n_variants).

    variant(i) -> (module, hook, pre). Returns (figures, {sampled index: effect [B]})."""
    n_total = n_variants if n_total is None else n_total
    clean = baseline.score()
    start = time.perf_counter()
    baseline.score()
    clean_s = time.perf_counter() - start
    picked = sample_indices(n_variants, sample)
    effects = {}
    start = time.perf_counter()
    for i in picked:
        effects[int(i)] = baseline.score(*variant(int(i))) - clean
    per_variant = (time.perf_counter() - start) / len(picked)
    return ({"baseline_s": clean_s + per_variant * n_total, "baseline_per_variant_s": per_variant,
             "baseline_sampled": int(len(picked)), "baseline_extrapolated": bool(len(picked) < n_total),
             "baseline": baseline.description()}, effects)


def _finish(result: dict[str, Any], emojax_effects: np.ndarray, baseline_effects: dict[int, np.ndarray]) -> None:
    if result.get("baseline_s"):
        result["speedup"] = result["baseline_s"] / result["emojax_s"]
        diffs = [np.abs(emojax_effects[i] - e).max() for i, e in baseline_effects.items()]
        result["max_abs_effect_diff"] = float(max(diffs))
        result["effect_scale"] = float(np.abs(emojax_effects).max())
    result["peak_rss_mb"] = peak_rss_mb()


def _timed(ctx: BenchContext, warmup: Callable[[], Any], run: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Compile with a cheap `warmup` (the same chunk shapes on one layer), then time full runs."""
    start = time.perf_counter()
    jax.block_until_ready(warmup())
    warmup_s = time.perf_counter() - start
    runs, out = [], None
    for _ in range(min(ctx.repeats, MAX_REPEATS)):
        start = time.perf_counter()
        out = jax.block_until_ready(run())
        runs.append(time.perf_counter() - start)
    return {"emojax_s": float(np.median(runs)), "emojax_warmup_s": warmup_s, "emojax_runs_s": runs}, out


# --- heads -------------------------------------------------------------------------------------------

def _head_scan(ctx: BenchContext, positions: str, n_prompts: int, baseline_sample: int | None) -> dict[str, Any]:
    cfg = ctx.config
    tokens, mask = chat_prompts(ctx, n_prompts)
    readout = unit_readout(ctx)

    def run(layers: Sequence[int] | None = None) -> np.ndarray:
        prefix = scan.capture_prefix(ctx.params, tokens, mask, config=cfg, keep_sequence=positions == "all")
        return scan.causal_head_scan(ctx.params, prefix, readout, config=cfg, positions=positions,
                                     layers=layers).effect

    result, effect = _timed(ctx, lambda: run([cfg.n_layers - 1]), run)
    effect = effect.reshape(cfg.n_layers * cfg.n_heads, -1)
    result.update({"prompts": n_prompts, "prompt_tokens": int(tokens.shape[1]), "positions": positions,
                   "variants": cfg.n_layers * cfg.n_heads, "baseline_s": None, "speedup": None,
                   "peak_rss_mb_emojax": peak_rss_mb()})
    sampled = {}
    if ctx.baseline:
        baseline = HookedBaseline(ctx, tokens, mask, readout)
        dh = cfg.head_dim

        def variant(i: int) -> tuple[Any, Callable, bool]:
            layer, head = divmod(i, cfg.n_heads)

            def zero_head(module: Any, args: tuple) -> tuple:
                z = args[0].clone()
                where = slice(None) if positions == "all" else slice(-1, None)
                z[:, where, head * dh:(head + 1) * dh] = 0
                return (z,) + tuple(args[1:])

            return baseline.layers[layer].self_attn.o_proj, zero_head, True

        figures, sampled = run_baseline(baseline, cfg.n_layers * cfg.n_heads, baseline_sample, variant)
        result.update(figures)
    _finish(result, effect, sampled)
    return result


def bench_head_scan(ctx: BenchContext, n_prompts: int = HEAD_PROMPTS,
                    baseline_sample: int | None = BASELINE_SAMPLE) -> dict[str, Any]:
    """Every head zeroed at t* (one-token suffix passes) vs one hooked HF forward per head."""
    return _head_scan(ctx, "last", n_prompts, baseline_sample)


def bench_head_scan_all_positions(ctx: BenchContext, n_prompts: int = HEAD_PROMPTS,
                                  baseline_sample: int | None = BASELINE_SAMPLE) -> dict[str, Any]:
    """Every head zeroed at every position (recompute from its layer) vs one hooked HF forward per head."""
    return _head_scan(ctx, "all", n_prompts, baseline_sample)


# --- neurons -----------------------------------------------------------------------------------------

def bench_neuron_scan(ctx: BenchContext, n_prompts: int = NEURON_PROMPTS,
                      baseline_sample: int | None = BASELINE_SAMPLE,
                      layers: Sequence[int] | None = None) -> dict[str, Any]:
    """The exhaustive causal neuron scan (every neuron zeroed at t*) vs one hooked HF forward per neuron.

    `layers` restricts the emojax scan to a subset for a quick estimate; the full-scan time is then
    extrapolated by suffix length (layers above each scanned layer) and flagged."""
    cfg = ctx.config
    tokens, mask = chat_prompts(ctx, n_prompts)
    readout = unit_readout(ctx)
    scanned = list(range(cfg.n_layers)) if layers is None else list(layers)
    start = time.perf_counter()
    prefix = scan.capture_prefix(ctx.params, tokens, mask, config=cfg)
    scan.causal_neuron_scan(ctx.params, prefix, readout, config=cfg, layers=[cfg.n_layers - 1])  # compiles
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    prefix = scan.capture_prefix(ctx.params, tokens, mask, config=cfg)
    effect = scan.causal_neuron_scan(ctx.params, prefix, readout, config=cfg, layers=scanned).effect
    measured = time.perf_counter() - start
    suffix_layers = lambda ls: sum(cfg.n_layers - l for l in ls)  # layers l+1..L-1 plus the read-out
    emojax_s = measured * suffix_layers(range(cfg.n_layers)) / suffix_layers(scanned)
    n_variants = cfg.n_layers * cfg.d_ff
    result: dict[str, Any] = {
        "emojax_s": emojax_s, "emojax_measured_s": measured, "emojax_layers_scanned": len(scanned),
        "emojax_extrapolated": len(scanned) < cfg.n_layers, "emojax_warmup_s": compile_s,
        "prompts": n_prompts, "prompt_tokens": int(tokens.shape[1]), "variants": n_variants,
        "baseline_s": None, "speedup": None, "peak_rss_mb_emojax": peak_rss_mb(),
    }
    sampled = {}
    if ctx.baseline:
        baseline = HookedBaseline(ctx, tokens, mask, readout)
        candidates = [l * cfg.d_ff + j for l in scanned for j in range(cfg.d_ff)]

        def variant(i: int) -> tuple[Any, Callable, bool]:
            layer, neuron = divmod(candidates[i], cfg.d_ff)

            def zero_neuron(module: Any, args: tuple) -> tuple:
                a = args[0].clone()
                a[:, -1, neuron] = 0
                return (a,) + tuple(args[1:])

            return baseline.layers[layer].mlp.down_proj, zero_neuron, True

        figures, sampled = run_baseline(baseline, len(candidates), baseline_sample, variant, n_total=n_variants)
        result.update(figures)
    _finish(result, effect.reshape(len(scanned) * cfg.d_ff, -1), sampled)
    return result


# --- sublayers ---------------------------------------------------------------------------------------

def bench_sublayer_scan(ctx: BenchContext, n_prompts: int = SUBLAYER_PROMPTS,
                        baseline_sample: int | None = BASELINE_SAMPLE) -> dict[str, Any]:
    """S6d: every sublayer x alpha injected at t* (suffix passes) vs one hooked HF forward per
    (sublayer, alpha). Directions are random unit vectors; sigma is the prompts' own RMS at t*."""
    cfg = ctx.config
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
        return scan.sublayer_influence(ctx.params, prefix, directions, sigma, ALPHAS, readout, config=cfg)

    warmup = lambda: scan.suffix_scores(ctx.params, probe, np.zeros((len(ALPHAS), cfg.d_model), np.float32),
                                        layer=cfg.n_layers - 1, sublayer="mlp", readout=readout, config=cfg)
    result, influence = _timed(ctx, warmup, run)
    effect = (influence.perturbed - influence.base).reshape(-1, tokens.shape[0])
    n_variants = 2 * cfg.n_layers * len(ALPHAS)
    result.update({"prompts": n_prompts, "prompt_tokens": int(tokens.shape[1]), "alphas": list(ALPHAS),
                   "variants": n_variants, "baseline_s": None, "speedup": None, "peak_rss_mb_emojax": peak_rss_mb()})
    sampled = {}
    if ctx.baseline:
        baseline = HookedBaseline(ctx, tokens, mask, readout)
        torch = baseline.torch

        def variant(i: int) -> tuple[Any, Callable, bool]:
            kind, rest = divmod(i, cfg.n_layers * len(ALPHAS))
            layer, a = divmod(rest, len(ALPHAS))
            vec = torch.from_numpy(ALPHAS[a] * sigma[kind, layer] * directions[kind, layer])

            def inject(module: Any, args: tuple, output: Any) -> Any:
                out = output[0] if isinstance(output, tuple) else output
                out = out.clone()
                out[:, -1] += vec
                return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

            block = baseline.layers[layer]
            return (block.self_attn if kind == 0 else block.mlp), inject, False

        figures, sampled = run_baseline(baseline, n_variants, baseline_sample, variant)
        result.update(figures)
    _finish(result, effect, sampled)
    return result
