"""Benchmarks of emojax against its baselines, by name.

    python -m experiments.benchmark --only=prefill,prefill_last --json=bench.json
    python -m experiments.benchmark --only=prefill --random_config=llama-3.2-3b --dtype=bfloat16 --nobaseline
    python -m experiments.benchmark --only=prefill,generate --random_config=smollm2-135m --baseline_device=cuda

Each benchmark is `module:function` in BENCHMARKS, imported only when asked for; a name whose module
is not present is skipped. Results go to --json as
{name: {"emojax_s", "baseline_s", "speedup", ..., "run": {model, dtype, machine, load average}}}
and are printed as a Markdown table.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
from absl import app, flags, logging

from emojax import console
from emojax.loading import DEFAULT_MODEL, load_model
from emojax.params import random_params
from experiments.bench_common import CONFIG_SHAPES, BenchContext, load_average, machine, shape_config

BENCHMARKS: dict[str, str] = {
    "prefill": "experiments.bench_prefill:bench_prefill",
    "prefill_last": "experiments.bench_prefill:bench_prefill_last",
    "generate": "experiments.bench_generate:bench_generate",
    "generate_steered": "experiments.bench_generate:bench_generate_steered",
    "generate_edit_cost": "experiments.bench_edit_cost:bench_generate_edit_cost",
    "head_scan": "experiments.bench_scans:bench_head_scan",
    "head_scan_all_positions": "experiments.bench_scans:bench_head_scan_all_positions",
    "neuron_scan": "experiments.bench_scans:bench_neuron_scan",
    "sublayer_scan": "experiments.bench_scans:bench_sublayer_scan",
}
# Benchmarks whose HF baseline runs on the CPU only (the hooked scans feed it host tensors).
CPU_BASELINE_ONLY = ("head_scan", "head_scan_all_positions", "neuron_scan", "sublayer_scan")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

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


def make_context() -> BenchContext:
    dtype = DTYPES[FLAGS.dtype]
    if FLAGS.random_config:
        config = shape_config(FLAGS.random_config)
        return BenchContext(FLAGS.random_config + " (random weights)", config, random_params(config, dtype=dtype),
                            None, dtype, FLAGS.repeats, FLAGS.baseline, FLAGS.baseline_device)
    loaded = load_model(FLAGS.model, dtype=dtype)
    return BenchContext(loaded.name, loaded.config, loaded.params, loaded.tokenizer, dtype, FLAGS.repeats,
                        FLAGS.baseline, FLAGS.baseline_device)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


_MAIN_KEYS = ("emojax_s", "baseline_s", "speedup")


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per benchmark: the three main figures, then every other number it reported."""
    lines = ["| benchmark | emojax s | baseline s | speedup | details |", "|---|---|---|---|---|"]
    for name, r in results.items():
        details = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()
                            if k not in _MAIN_KEYS and isinstance(v, (int, float)))
        lines.append(f"| {name} | {_fmt(r.get('emojax_s'))} | {_fmt(r.get('baseline_s'))} | "
                     f"{_fmt(r.get('speedup'))} | {details} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    console.configure(FLAGS)
    names = FLAGS.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise app.UsageError(f"--only: unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    if FLAGS.repeats < 1:
        raise app.UsageError(f"--repeats={FLAGS.repeats}: expected at least 1")
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
    app.run(main)
