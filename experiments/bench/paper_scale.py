"""Every compute stage of the method at a model's real width, depth and vocabulary, planned to fit.

    python -m experiments.bench.paper_scale --shape=llama-3.2-3b --dtype=bfloat16 --json=paper_3b.json
    python -m experiments.bench.paper_scale --shape=qwen2.5-7b --dtype=bfloat16 --memory_budget_gb=22 --plan_only

Random weights of a shape of experiments/bench/common.py, random prompts of the paper's length
(83 tokens) and the smallest item counts that exercise each stage (one group of the six emotions):
capture, directions, analytic neuron contributions, closed-form head scores, the exact causal head
scan (every head at every position), the exhaustive causal neuron scan (every neuron of each scanned
layer, in planned chunks), the sublayer influence, circuits, and prompted, steered and
circuit-modulated generation (experiments/bench/paper_stages.py). Chunk sizes come from
--memory_budget_gb (default: what the device reports free, on a CPU the available host memory, less
a margin; emojax.scan.memory_plan); a stage that cannot fit even one row is reported as not run,
with what it needs.

Per stage: FLOPs, wall time (after an untimed warm-up that compiles the same programs), peak host
memory (and on an accelerator the device's peak so far), the chunk plans, and the percent of the
matmul peak measured now in the run's dtype. The projection scales each stage's per-unit time to
the paper's full workload (experiments/bench/paper_workload.py) and sums it against 30 minutes.
Writes {"shape", "dtype", "device", "budget_mib", "settings", "stages": {name: {...}}, "projection"}
to --json after every stage and prints both tables.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags

from emojax.console import say
from emojax.launch.launcher import run_launcher
from emojax.scan.memory_plan import BudgetTooSmall, default_budget, mib, weight_bytes
from experiments.bench.common import (CONFIG_SHAPES, DTYPES, BenchContext, BenchSizes, host_random_params, machine,
                                      measure_matmul_peak, pct_of_peak, rss_during, shape_config)
from experiments.bench.paper_stages import NEEDS, STAGES, N_EMOTIONS, PaperRun, StageJob
from experiments.bench.paper_workload import GOAL_S, projection

PROMPT_TOKENS = 83  # method.md §13: prompts are about 83 tokens

flags.DEFINE_enum("shape", None, sorted(CONFIG_SHAPES), "Model shape (random weights) of experiments/bench/common.py.")
flags.DEFINE_enum("dtype", "bfloat16", sorted(DTYPES), "Dtype of the weights.")
flags.DEFINE_string("json", None, "Write the results to this JSON file (after every stage).")
flags.DEFINE_float("memory_budget_gb", None, "GiB the run may use, weights included (default: free device "
                   "memory, on a CPU available host memory, less 10% and at least 512 MiB).")
flags.DEFINE_bool("plan_only", False, "Print the memory plan of every stage and stop (no weights are built).")
flags.DEFINE_list("only", None, f"Stages to run (default: all, in order): {', '.join(STAGES)}.")
flags.DEFINE_integer("prompts", N_EMOTIONS, "Captured items (a multiple of 6: complete groups of the six emotions).")
flags.DEFINE_integer("prompt_tokens", PROMPT_TOKENS, "Tokens per prompt.")
flags.DEFINE_integer("scan_prompts", 1, "Prompts of the causal head and neuron scans.")
flags.DEFINE_list("scan_layers", None, "Layers the causal scans run, every head/neuron of each (default: all on an "
                  "accelerator, the middle layer on a CPU); the projection scales them to every layer.")
flags.DEFINE_integer("generate_batch", N_EMOTIONS, "Rows of each generation stage.")
flags.DEFINE_integer("new_tokens", 8, "New tokens of each generation stage (every row decodes all of them).")
FLAGS = flags.FLAGS


def _check_flags(n_layers: int) -> tuple[int, ...]:
    """The scanned layers; a bad count or layer is a one-line usage error."""
    if FLAGS.prompts < N_EMOTIONS or FLAGS.prompts % N_EMOTIONS:
        raise app.UsageError(f"--prompts={FLAGS.prompts}: expected a positive multiple of {N_EMOTIONS}")
    if not 1 <= FLAGS.scan_prompts <= FLAGS.prompts:
        raise app.UsageError(f"--scan_prompts={FLAGS.scan_prompts}: expected 1..--prompts ({FLAGS.prompts})")
    for name in ("prompt_tokens", "generate_batch", "new_tokens"):
        if getattr(FLAGS, name) < (2 if name == "prompt_tokens" else 1):
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)}: too small")
    unknown = sorted(set(FLAGS.only or ()) - set(STAGES))
    if unknown:
        raise app.UsageError(f"--only: unknown stage(s) {unknown}; known: {list(STAGES)}")
    if FLAGS.scan_layers is None:
        on_cpu = jax.devices()[0].platform == "cpu"
        return (n_layers // 2,) if on_cpu else tuple(range(n_layers))
    layers = tuple(sorted({int(layer) for layer in FLAGS.scan_layers}))
    if not layers or not all(0 <= layer < n_layers for layer in layers):
        raise app.UsageError(f"--scan_layers={FLAGS.scan_layers}: expected layers in 0..{n_layers - 1}")
    return layers


def _device_peak_mib() -> float | None:
    """The accelerator allocator's peak so far (None on a CPU, where host memory is the figure)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return mib(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def measure(job: StageJob, peak_gflops: float) -> tuple[Any, dict[str, Any]]:
    """Warm up, then time `job.work` once; its result and figures."""
    start = time.perf_counter()
    jax.block_until_ready(job.warmup() if job.warmup is not None else job.work())
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    result, memory = rss_during(lambda: jax.block_until_ready(job.work()))
    wall_s = time.perf_counter() - start
    # The first call's extra time; a warm-up that repeated the work also ran it once.
    compile_s = warmup_s if job.warmup is not None else max(0.0, warmup_s - wall_s)
    figures = {"gflop": job.flop / 1e9, "wall_s": wall_s, "warmup_s": warmup_s, "compile_s": compile_s,
               "pct_of_peak": pct_of_peak(job.flop, wall_s, peak_gflops) if job.flop else None,
               "peak_host_mib": memory["peak_rss_mb"], "host_before_mib": memory["rss_before_mb"],
               "peak_device_mib": _device_peak_mib(), "units": job.units,
               "chunks": {name: plan.as_json() for name, plan in job.plans.items()}}
    return result, figures


def _needs_met(run: PaperRun, name: str) -> bool:
    needed = NEEDS.get(name, ())
    return all(key in run.state for key in ((needed,) if isinstance(needed, str) else needed))


def run_stages(run: PaperRun, names: list[str], peak_gflops: float | None, report: dict[str, Any],
               json_path: str | None) -> None:
    """Plan every stage; unless `peak_gflops` is None (plan only), run and measure it too."""
    for name in names:
        if peak_gflops is not None and not _needs_met(run, name):
            report["stages"][name] = {"skipped": f"{name}: an earlier stage it reads did not run"}
            continue
        try:
            job = STAGES[name](run)
        except BudgetTooSmall as err:
            report["stages"][name] = {"skipped": str(err)}
            continue
        if peak_gflops is None:
            report["stages"][name] = {"gflop": job.flop / 1e9,
                                      "chunks": {k: p.as_json() for k, p in job.plans.items()}}
            continue
        say("%s: running (%.0f GFLOP)", name, job.flop / 1e9)
        result, report["stages"][name] = measure(job, peak_gflops)
        job.keep(result)
        figures = report["stages"][name]
        say("%s: %.1f s, %.0f MiB peak host memory", name, figures["wall_s"], figures["peak_host_mib"])
        if json_path:
            report["projection"] = projection(report["stages"], run.config)
            Path(json_path).write_text(json.dumps(report, indent=2) + "\n")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def tables(report: dict[str, Any]) -> str:
    """The stage table, then the projection's arithmetic per stage."""
    lines = [f"{report['shape']} {report['dtype']} on {report['device']['jax_device']}, budget "
             f"{report['budget_mib']} MiB", "",
             "| stage | GFLOP | wall s | compile s | % of peak | peak host MiB | peak device MiB | chunks (rows) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in report["stages"].items():
        chunks = ", ".join(f"{k} {c['rows']} (plan {c['planned_peak_mib']} MiB)" for k, c in f.get("chunks", {}).items())
        if "skipped" in f:
            lines.append(f"| {name} | not run: {f['skipped']} |||||||")
            continue
        lines.append(f"| {name} | {_fmt(f.get('gflop'))} | {_fmt(f.get('wall_s'))} | {_fmt(f.get('compile_s'))} | "
                     f"{_fmt(f.get('pct_of_peak'))} | {_fmt(f.get('peak_host_mib'))} | "
                     f"{_fmt(f.get('peak_device_mib'))} | {chunks or '-'} |")
    proj = report.get("projection")
    if proj:
        lines += ["", "| stage | full workload | per-unit s x count = total s |", "|---|---|---|"]
        for name, row in proj["stages"].items():
            lines.append(f"| {name} | {row.get('count_is', '-')} | {row.get('arithmetic', row.get('not_projected'))} |")
        lines.append(f"| **total** | | {_fmt(proj['total_s'])} s + {_fmt(proj['compile_s_once'])} s compilation "
                     f"(goal {GOAL_S} s; within: {proj['within_goal']}) |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.shape is None:
        raise app.UsageError("--shape is required: " + ", ".join(sorted(CONFIG_SHAPES)))
    config, dtype = shape_config(FLAGS.shape), DTYPES[FLAGS.dtype]
    layers = _check_flags(config.n_layers)
    if FLAGS.memory_budget_gb is not None and FLAGS.memory_budget_gb <= 0:
        raise app.UsageError(f"--memory_budget_gb={FLAGS.memory_budget_gb}: expected a positive number")
    budget = default_budget() if FLAGS.memory_budget_gb is None else int(FLAGS.memory_budget_gb * 2 ** 30)
    if weight_bytes(config, dtype) > budget:
        raise app.UsageError(f"weights: {FLAGS.shape} in {FLAGS.dtype} needs {mib(weight_bytes(config, dtype))} MiB "
                             f"but the memory budget is {mib(budget)} MiB")
    names = FLAGS.only or list(STAGES)
    params = None if FLAGS.plan_only else host_random_params(config, dtype)
    bench = BenchContext(FLAGS.shape + " (random weights)", config, params, None, dtype, repeats=1, baseline=False,
                         peers=(), sizes=BenchSizes(generate_tokens=FLAGS.new_tokens))
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (FLAGS.prompts, FLAGS.prompt_tokens), np.int32)
    run = PaperRun(bench, tokens, budget, FLAGS.scan_prompts, layers, FLAGS.generate_batch, FLAGS.new_tokens)
    settings = {name: getattr(FLAGS, name) for name in ("prompts", "prompt_tokens", "scan_prompts", "generate_batch",
                                                        "new_tokens")}
    report = {"shape": FLAGS.shape, "dtype": FLAGS.dtype, "device": machine(), "budget_mib": mib(budget),
              "weights_mib": mib(weight_bytes(config, dtype)), "settings": {**settings, "scan_layers": list(layers)},
              "stages": {}}
    on_accelerator = jax.devices()[0].platform != "cpu"
    peak = None if FLAGS.plan_only else measure_matmul_peak(n=4096 if on_accelerator else 2048, dtype=dtype)
    report["matmul_peak_gflops"] = peak
    run_stages(run, names, peak, report, FLAGS.json)
    if not FLAGS.plan_only:
        report["projection"] = projection(report["stages"], config)
    if FLAGS.json:
        Path(FLAGS.json).write_text(json.dumps(report, indent=2) + "\n")
    print(tables(report))


if __name__ == "__main__":
    run_launcher(main)
