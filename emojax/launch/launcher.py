"""What every stage launcher shares: the flags, and building a StageContext from them.

    define_flags()                    --model --train --test --preset --judge --out --force_new_run and
                                      one flag per Settings field (method choices, method.md §11)
    no_extra_arguments(argv)          refuse positional arguments
    list_flag("alphas", FLAGS.alphas, float, "numbers")   parse a list flag, naming it on bad input
    ctx = context_from_flags(FLAGS)   check the whole configuration, then load the model, the splits
                                      (subsampled by the preset), the judge, and open (or resume) the
                                      run directory
    run_launcher(main)                `app.run(main)`, with known input errors and environment errors (a
                                      full disk, a read-only filesystem) as one line and exit 2, and
                                      SIGINT / SIGTERM as one line and exit 130 / 143

`open_context` does the same from plain arguments, for library use and tests (a judge object may be
passed instead of a spec).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence

import jax
from absl import app
from absl import flags as absl_flags
from absl import logging
from jax.sharding import Mesh

from emojax import console
from emojax.data import DatasetError, load_dataset, resolve_dataset, subsample
from emojax.judge import SPEC_HELP
from emojax.judge.http import DEFAULT_DEADLINE_S, DEFAULT_TIMEOUT_S
from emojax.launch import preflight
from emojax.loading import DEFAULT_MODEL, load_model
from emojax.parallel import mesh_from_spec, shard_params
from emojax.parallel.distributed import initialize_distributed
from emojax.runs import InputError, ModelIdentity, RunDir, define_run_flags, lock
from emojax.runs.environment_errors import environment_message
from emojax.runs.interrupt import INTERRUPTED, Terminated, exit_status, handle_sigterm
from emojax.runs.rundir import check_out_creatable
from emojax.runs.stage_record import judge_identity
from emojax.stages.context import PRESETS, Preset, Settings, StageContext
from emojax.weights.cache import resolve_cache_dir
from emojax.weights.cache_dir import check_cache_dir
from emojax.weights.errors import WeightsError

_CHOICES = {"directions_rule": ("accepted", "all"), "ratio_mode": ("fixed", "auto"),
            "budget": ("transferred", "literal"), "circuit_ranking": ("analytic", "causal")}
_HELP = {
    "directions_rule": "Items for directions/components/sublayer samples: judge-accepted (paper, D2) or all.",
    "min_complete_groups": "Below this many complete accepted groups, the 'accepted' rule falls back to 'all'.",
    "steer_alpha": "Steering alpha; unset: the norm-matched transfer 8*sqrt(d/3072) (method.md §8).",
    "literal_alpha": "Use the literal steering alpha 8 instead of the transferred one.",
    "modulation_scale": "Base circuit-modulation scale lambda (S7).",
    "official_scales": "Apply the official per-emotion factor (anger 0.8, D11).",
    "ratio_mode": "Circuit budget split: fixed 70/30 or auto by positive influence share (D9).",
    "budget": "Circuit budget: transferred by method.md §8, or the literal 560 = 392 + 168.",
    "date_string": "Date string for chat templates that print one (D14).",
    "harmonised": "Identical decoding and dtype for every condition (D12, D13).",
    "seed": "Seed for any sampling or random controls.",
    "per_emotion_dose": "Tune steering alpha and circuit lambda per emotion on the train split (default: one "
                        "value per method, with the official anger factor).",
    "circuit_ranking": "Circuit members per layer: top-k by C_mean and head importance (analytic) or by the "
                       "exact causal scans (causal; needs --causal).",
}


def define_flags() -> None:
    """Define the shared launcher flags on absl's global FLAGS (call once, at launcher import)."""
    absl_flags.disclaim_key_flags()  # the calling launcher owns these flags, so its --help lists them
    define_run_flags()
    absl_flags.DEFINE_string("model", DEFAULT_MODEL, "Registered model name, HF checkpoint directory or .gguf file.")
    absl_flags.DEFINE_string("train", "bundled:train", "Analysis split (SEV schema): a .jsonl path, "
                             "'bundled:train', 'bundled:test' or 'official'.")
    absl_flags.DEFINE_string("test", "bundled:test", "Evaluation split (SEV schema), same forms as --train.")
    absl_flags.DEFINE_enum("preset", "quick", sorted(PRESETS), "Run size (emojax.stages.context.PRESETS).")
    absl_flags.DEFINE_string("judge", "offline", f"Judge: {SPEC_HELP}.")
    absl_flags.DEFINE_string("mesh", "none", "Device mesh: none (one device), auto (every device splits the "
                             "prompt rows) or DATAxMODEL, e.g. 8x1 or 4x2 (heads and MLP width over MODEL). "
                             "Results are the same on any mesh.")
    absl_flags.DEFINE_string("cache_dir", None, "Converted-model cache (default $EMOJAX_CACHE_DIR or ~/.cache/emojax).")
    define_judge_deadline_flags()
    for field in dataclasses.fields(Settings):
        _define_setting(field)


def define_judge_deadline_flags() -> None:
    """--judge_timeout_s and --judge_deadline_s (an HTTP judge's limits; they change no verdict)."""
    absl_flags.DEFINE_float("judge_timeout_s", DEFAULT_TIMEOUT_S, "HTTP judge: seconds one request may wait "
                            "for the server (per connect or read).")
    absl_flags.DEFINE_float("judge_deadline_s", DEFAULT_DEADLINE_S, "HTTP judge: seconds one verdict may take, "
                            "every retry and Retry-After wait included; then it fails.")


def no_extra_arguments(argv: Sequence[str]) -> None:
    """Launchers take flags only: positional arguments are refused by name."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def list_flag(name: str, values: Sequence[str], convert: Callable[[str], Any], expected: str,
              positive: bool = False) -> list[Any]:
    """The values of list flag --name converted one by one; a bad value (nan and inf included, and
    with `positive` any value <= 0 or an empty list) is a usage error naming the flag."""
    try:
        converted = [convert(v) for v in values]
    except ValueError:
        converted = None
    if converted is None or any(isinstance(v, float) and not math.isfinite(v) for v in converted) or \
            (positive and (not converted or min(converted) <= 0)):
        raise app.UsageError(f"--{name}={','.join(values)}: expected {expected}") from None
    return converted


# What "known input error" means for `run_launcher`: each names the input and says what is wrong.
KNOWN_ERRORS = (InputError, DatasetError, WeightsError, app.UsageError)


def run_launcher(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)` for a launcher: a known input error (a bad flag, file, dataset, checkpoint or
    judge) is printed as one line and exits with status 2; its traceback only with --verbosity=1 or
    higher. A full disk, an exceeded quota or a read-only filesystem is one line and status 2 too. SIGINT
    and SIGTERM print "interrupted; rerun the same command to resume" and exit 130 and 143. Any other
    error keeps its traceback. The terminal shows console lines unless a logging flag asks for the full
    log (emojax.console)."""
    def guarded(argv: list[str]) -> Any:
        console.configure(absl_flags.FLAGS)
        handle_sigterm()
        try:
            return main(argv)
        except KNOWN_ERRORS as err:
            if absl_flags.FLAGS.verbosity >= 1:
                raise
            _exit_with(err)
        except OSError as err:
            message = environment_message(err)
            if message is None or absl_flags.FLAGS.verbosity >= 1:
                raise
            _exit_with(InputError(message))
        except (KeyboardInterrupt, Terminated) as err:
            sys.stderr.write(f"{INTERRUPTED}\n")
            sys.exit(exit_status(err))

    app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a flag it refuses reported like every other input error."""
    try:
        return absl_flags.FLAGS(argv)
    except absl_flags.Error as err:
        _exit_with(err)


def _exit_with(err: BaseException) -> NoReturn:
    message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def _define_setting(field: dataclasses.Field) -> None:
    name, default, help_text = field.name, field.default, _HELP.get(field.name, "Method setting.")
    if name in _CHOICES:
        absl_flags.DEFINE_enum(name, default, list(_CHOICES[name]), help_text)
    elif isinstance(default, bool):
        absl_flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
        absl_flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float) or "float" in str(field.type):
        absl_flags.DEFINE_float(name, default, help_text)
    else:
        absl_flags.DEFINE_string(name, default, help_text)


def settings_from(values: Mapping[str, Any]) -> Settings:
    """Settings from any mapping holding (some of) its field names; the rest keep their defaults."""
    return Settings(**{f.name: values[f.name] for f in dataclasses.fields(Settings) if f.name in values})


def open_context(*, out: str, model: Any = DEFAULT_MODEL, train: str = "bundled:train",
                 test: str = "bundled:test", preset: str | Preset = "quick", judge: Any = "offline",
                 settings: Settings | None = None, force_new: bool = False,
                 cache_dir: str | None = None, mesh: Mesh | None = None,
                 judge_timeout_s: float = DEFAULT_TIMEOUT_S,
                 judge_deadline_s: float = DEFAULT_DEADLINE_S) -> StageContext:
    """Check the configuration, load everything a stage needs and open the run directory.

    `model`: a name/path for `load_model`, or an already loaded model; `preset`: a name of PRESETS or
    a Preset; `judge`: a spec for `make_judge` or a judge callable. These arguments are the run's
    identity; `mesh` and the judge's time limits are not part of it (they change no result).
    """
    if isinstance(preset, str) and preset not in PRESETS:
        raise InputError(f"--preset={preset!r}: expected one of {sorted(PRESETS)}")
    chosen = PRESETS[preset] if isinstance(preset, str) else preset
    settings = settings or Settings()
    # Everything that can be checked without the model is, before the model loads.
    preflight.check_settings(settings)
    splits, sources = {}, {}
    for split, spec, per_theme in (("train", train, chosen.train_per_theme), ("test", test, chosen.test_per_theme)):
        records = load_dataset(spec)
        sources[split] = resolve_dataset(spec)
        splits[split] = records if per_theme is None else subsample(records, per_theme)
        logging.info("%s split %s: %d records (of %d)", split, spec, len(splits[split]), len(records))
    if isinstance(model, str):
        preflight.check_model_source(model)
    check_cache_dir(resolve_cache_dir(cache_dir))  # the converted weights and the HTTP judge's verdicts
    if isinstance(judge, str):
        judge_fn = preflight.make_checked_judge(judge, timeout_s=judge_timeout_s, deadline_s=judge_deadline_s)
    else:
        judge_fn = judge
        preflight.check_judge(judge_fn)
    out_path = Path(out)
    check_out_creatable(out_path)
    lock.check_not_locked(out_path, force_new)  # a busy --out fails before the model loads
    loaded = load_model(model, cache_dir=cache_dir) if isinstance(model, str) else model
    preflight.check_tokenizer(loaded)
    for split in ("train", "test"):
        preflight.check_prompt_lengths(loaded, splits[split], str(sources[split]), chosen.max_new_tokens,
                                       settings.date_string)
    if mesh is not None:
        loaded = dataclasses.replace(loaded, params=shard_params(loaded.params, mesh, loaded.config))
        logging.info("mesh %s: weights placed by their logical axes", dict(mesh.shape))
    identity = ModelIdentity(name=loaded.name, source=str(loaded.source), content_hash=loaded.source_hash,
                             config=dataclasses.asdict(loaded.config))
    # The run's identity is these values only, so every launcher (the pipeline or a single stage) can
    # resume the same run directory; stage-specific options go into that stage's own fingerprint.
    flags = {"model": loaded.name, "train": str(train), "test": str(test), "preset": chosen.identity(),
             "judge": judge if isinstance(judge, str) else judge_identity(judge), **dataclasses.asdict(settings)}
    weights = {"source_hash": loaded.source_hash, "weights_hash": getattr(loaded, "weights_hash", None),
               "from_cache": getattr(loaded, "from_cache", None)}
    run = RunDir.open(out, flags=flags, model=identity, inputs=sources, force_new=force_new, weights=weights)
    return StageContext(model=loaded, run=run, train=splits["train"], test=splits["test"], judge=judge_fn,
                        preset=chosen, settings=settings, mesh=mesh)


def run_directory_of_host(out: str) -> str:
    """Every host of a multi-host run computes everything; host 0 writes the run directory and the
    others write to their own `OUT.hostN`, so hosts never race on one file (e.g. on a shared bucket)."""
    index = jax.process_index()
    return out if index == 0 else f"{out.rstrip('/')}.host{index}"


def context_from_flags(values: Any) -> StageContext:
    """The StageContext of an absl launcher (`values` is FLAGS after parsing). Joins the JAX
    distributed runtime first when the environment describes several hosts (a no-op on one)."""
    initialize_distributed()
    try:
        mesh = mesh_from_spec(values.mesh)
    except ValueError as err:
        if str(err).startswith("--mesh"):  # a malformed value, named already
            raise InputError(str(err)) from None
        count = jax.device_count()
        raise InputError(f"--mesh={values.mesh} does not fit the {count} device(s) present; use --mesh=auto or a "
                         f"DATAxMODEL grid whose product is {count}") from None
    return open_context(out=run_directory_of_host(values.out), model=values.model, train=values.train, test=values.test,
                        preset=values.preset, judge=values.judge,
                        settings=settings_from(values.flag_values_dict()), force_new=values.force_new_run,
                        cache_dir=values.cache_dir, mesh=mesh, judge_timeout_s=values.judge_timeout_s,
                        judge_deadline_s=values.judge_deadline_s)
