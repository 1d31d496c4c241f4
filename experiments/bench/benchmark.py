"""Benchmarks of emojax against its baselines, by name.

    python -m experiments.bench.benchmark --only=prefill,prefill_last --json=bench.json
    python -m experiments.bench.benchmark --only=prefill --random_config=llama-3.2-3b --dtype=bfloat16 --nobaseline
    python -m experiments.bench.benchmark --only=prefill,generate --random_config=smollm2-135m --baseline_device=cuda
    python -m experiments.bench.benchmark --only=head_scan,sublayer_scan --peers=all --json=peers.json

Each benchmark is `module:function` in BENCHMARKS, imported only when asked for; a name whose module
is not present is skipped. Results go to --json as
{name: {"emojax_s", "baseline_s", "speedup", ..., "run": {model, dtype, machine, load average}}}
and are printed as a Markdown table. The scans and `generate_steered` also run the peers named by
--peers (experiments/bench/peers.py) and write `peers: {name: {"seconds", "max_abs_diff", ...}}`.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable

from absl import app, flags, logging

from emojax.launch.launcher import run_launcher
from emojax.loading import DEFAULT_MODEL, load_model
from emojax.model.params import random_params
from experiments.bench.common import (CONFIG_SHAPES, DTYPES, BenchContext, BenchSizes, load_average, machine,
                                     shape_config)
from experiments.bench.peers import PEER_NAMES, missing_packages, parse_peers

BENCHMARKS: dict[str, str] = {
    "prefill": "experiments.bench.prefill:bench_prefill",
    "prefill_last": "experiments.bench.prefill:bench_prefill_last",
    "generate": "experiments.bench.generate:bench_generate",
    "generate_steered": "experiments.bench.generate:bench_generate_steered",
    "generate_edit_cost": "experiments.bench.edit_cost:bench_generate_edit_cost",
    "head_scan": "experiments.bench.scans:bench_head_scan",
    "head_scan_all_positions": "experiments.bench.scans:bench_head_scan_all_positions",
    "neuron_scan": "experiments.bench.scans:bench_neuron_scan",
    "sublayer_scan": "experiments.bench.scans:bench_sublayer_scan",
    "suffix_parts": "experiments.bench.suffix_parts:bench_suffix_parts",
    "judge_offline": "experiments.bench.judge:bench_judge_offline",
    "judge_reader": "experiments.bench.judge:bench_judge_reader",
    "fluency_pass": "experiments.bench.judge:bench_fluency_pass",
}
# Benchmarks whose HF baseline runs on the CPU only (the hooked scans feed it host tensors).
CPU_BASELINE_ONLY = ("head_scan", "head_scan_all_positions", "neuron_scan", "sublayer_scan")

flags.DEFINE_list("only", None, f"Benchmarks to run (default: all). Known: {', '.join(BENCHMARKS)}.")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (the median is reported), after one warm-up.")
flags.DEFINE_string("model", DEFAULT_MODEL, "Registered model name, HF checkpoint directory or GGUF file.")
flags.DEFINE_enum("random_config", None, sorted(CONFIG_SHAPES),
                  "Use random weights of this published config shape instead of --model.")
flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Parameter dtype of the emojax side.")
flags.DEFINE_bool("baseline", True, "Also time HF PyTorch (float32) on the same weights.")
flags.DEFINE_enum("baseline_device", "cpu", ["cpu", "cuda"],
                  "Device of the HF PyTorch baseline (prefill and generate; the scans' baseline is CPU only).")
flags.DEFINE_string("peers", "hf_hooks", f"Peers run beside emojax in the scans and generate_steered: 'all', "
                    f"'none' or a comma list of {', '.join(PEER_NAMES)} (--nobaseline runs none).")
flags.DEFINE_integer("scan_prompts", None, "Prompts of the scans (default: each scan's own, 48 or 8).")
flags.DEFINE_list("neuron_layers", None, "Layers emojax's neuron_scan runs, extrapolated to all (default: all).")
flags.DEFINE_integer("peer_sample", BenchSizes.peer_sample,
                     "Scan variants each peer runs (at least one batch), scaled to the full scan.")
flags.DEFINE_integer("peer_batch_rows", BenchSizes.peer_batch_rows,
                     "Batch rows (variants x prompts) of a batched full-forward peer.")
flags.DEFINE_integer("prefix_batch_rows", BenchSizes.prefix_batch_rows,
                     "Batch rows (variants x prompts) of hf_prefix's one-token passes.")
flags.DEFINE_integer("generate_batch", None, "Prompts of generate and generate_steered (default 32).")
flags.DEFINE_integer("generate_tokens", None, "New tokens of generate and generate_steered (default 64).")
FLAGS = flags.FLAGS


def resolve(name: str) -> Callable[[BenchContext], dict[str, Any]] | None:
    """The benchmark function of `name`, or None when its module is not present."""
    module_name, function = BENCHMARKS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        return None
    return getattr(module, function)


def make_sizes() -> BenchSizes:
    layers = None if FLAGS.neuron_layers is None else tuple(int(l) for l in FLAGS.neuron_layers)
    return BenchSizes(scan_prompts=FLAGS.scan_prompts, neuron_layers=layers, peer_sample=FLAGS.peer_sample,
                      peer_batch_rows=FLAGS.peer_batch_rows, prefix_batch_rows=FLAGS.prefix_batch_rows,
                      generate_batch=FLAGS.generate_batch, generate_tokens=FLAGS.generate_tokens)


def make_context() -> BenchContext:
    dtype = DTYPES[FLAGS.dtype]
    peers = parse_peers(FLAGS.peers) if FLAGS.baseline else ()
    if FLAGS.random_config:
        config = shape_config(FLAGS.random_config)
        name, params, tokenizer = FLAGS.random_config + " (random weights)", random_params(config, dtype=dtype), None
    else:
        loaded = load_model(FLAGS.model, dtype=dtype)
        name, config, params, tokenizer = loaded.name, loaded.config, loaded.params, loaded.tokenizer
    return BenchContext(name, config, params, tokenizer, dtype, FLAGS.repeats, FLAGS.baseline,
                        FLAGS.baseline_device, peers=peers, sizes=make_sizes())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


_MAIN_KEYS = ("emojax_s", "baseline_s", "speedup")


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per benchmark: the three main figures, then every other number it reported; then one
    row per (benchmark, peer)."""
    lines = ["| benchmark | emojax s | baseline s | speedup | details |", "|---|---|---|---|---|"]
    for name, r in results.items():
        details = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()
                            if k not in _MAIN_KEYS and isinstance(v, (int, float)))
        lines.append(f"| {name} | {_fmt(r.get('emojax_s'))} | {_fmt(r.get('baseline_s'))} | "
                     f"{_fmt(r.get('speedup'))} | {details} |")
    peer_rows = [(name, peer, f) for name, r in results.items() for peer, f in r.get("peers", {}).items()]
    if peer_rows:
        lines += ["", "| benchmark | peer | seconds | peer / emojax | GFLOP | % of peak | max abs diff | notes |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, peer, f in peer_rows:
            note = f.get("skipped") or ("extrapolated from " + str(f["sampled"]) if f.get("extrapolated") else "")
            agreement = f.get("max_abs_diff", f.get("same_tokens"))
            lines.append(f"| {name} | {peer} | {_fmt(f.get('seconds'))} | {_fmt(f.get('ratio_to_emojax'))} | "
                         f"{_fmt(f.get('gflop'))} | {_fmt(f.get('pct_of_peak'))} | {_fmt(agreement)} | {note} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    names = FLAGS.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise app.UsageError(f"--only: unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    if FLAGS.repeats < 1:
        raise app.UsageError(f"--repeats={FLAGS.repeats}: expected at least 1")
    try:
        peers = parse_peers(FLAGS.peers)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    missing = missing_packages(peers) if FLAGS.baseline else {}
    if missing:
        raise app.UsageError(f"--peers: {sorted(missing)} need {sorted(set(missing.values()))}; install the bench "
                             f"extra (pip install -e '.[bench]') or leave them out")
    cpu_only = [n for n in names if n in CPU_BASELINE_ONLY]
    if FLAGS.baseline and FLAGS.baseline_device != "cpu" and cpu_only:
        raise app.UsageError(f"--baseline_device={FLAGS.baseline_device}: the baseline of {cpu_only} runs on CPU "
                             f"only; run them with --nobaseline for device figures")
    functions = {}
    for name in names:
        fn = resolve(name)
        if fn is None:
            logging.warning("skipping %s: module %s is not present", name, BENCHMARKS[name].split(":")[0])
        else:
            functions[name] = fn
    ctx = make_context()
    about = {"model": ctx.name, "dtype": FLAGS.dtype, "repeats": FLAGS.repeats, **machine()}
    results = {}
    for name, fn in functions.items():
        logging.info("running %s", name)
        load_before = load_average()
        figures = fn(ctx)
        results[name] = {**figures, "run": {**about, "load_average_before": load_before,
                                            "load_average_after": load_average()}}
        if FLAGS.json:  # written after every benchmark, so a later failure keeps the earlier figures
            Path(FLAGS.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(results))


if __name__ == "__main__":
    run_launcher(main)
