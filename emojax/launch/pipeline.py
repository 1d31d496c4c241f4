"""The end-to-end pipeline: every stage in dependency order, resumable, timed.

Each stage skips itself when its done.json carries the fingerprint of its current inputs, so running
the pipeline again on the same run directory only computes what is missing or out of date. The
wall time of every stage that ran is kept in `<run>/timings.json` (a skipped stage keeps the time of
the invocation that computed it); the report stage then writes `summary.json` and `report.md`.

Order (method.md §1): S1 on train -> fused capture -> directions (S2, S5, S6a-b) -> S1 on test
(prompting baseline) -> steering alpha tuned on train (optional) -> steering (S3) -> components
(S4a-b) -> validation (S4c) -> causal scans (optional) -> sublayer influence (S6d) -> circuits
(S6e-f) -> circuit lambda tuned on train (optional) -> circuit modulation (S7) -> neutral baseline
-> random-circuit control -> the other circuit ranking (when the causal scans ran) -> the preset's
circuit variants tuned on train and the per-emotion choice among them on test -> comparison ->
report. Every tuning stage follows the one protocol of `emojax.stages.tuning` and reads only the
train split.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from absl import logging

from emojax.console import say
from emojax.runs import read_json, write_json
from emojax.stages import (capture, causal, circuit_stage, compare, components, directions_stage, elicit, modulate,
                           other_ranking, random_circuits, report, steer, sublayer, validation, variants)
from emojax.stages.context import StageContext

StageFn = Callable[[StageContext, "Options"], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Options:
    """Pipeline switches that are not method settings: which optional sweeps and scans run."""

    alpha_sweep: bool = False     # steering alpha tuned on the train split (S3 option)
    scale_sweep: bool = False     # circuit lambda tuned on the train split (S7 option)
    causal: bool = False          # exhaustive causal scans and attribution (§14.2, §14.4)
    validation: bool = True       # ablation and enhancement curves (S4c, §14.1)
    random_circuits: bool = False  # random-circuit control on the test split
    variants: bool = False        # the preset's circuit variants tuned on train and chosen per emotion

    @classmethod
    def for_preset(cls, ctx: StageContext, **overrides: bool | None) -> "Options":
        """Tuning follows `preset.sweeps`, the causal scans `preset.causal_prompts`, the validation
        `preset.validation`, the random-circuit control `preset.random_draws` and the circuit variants
        `preset.variants` (on a run that ranks members analytically: the variants change those members),
        unless overridden."""
        defaults = {"alpha_sweep": ctx.preset.sweeps, "scale_sweep": ctx.preset.sweeps,
                    "causal": ctx.preset.causal_prompts > 0, "validation": ctx.preset.validation,
                    "random_circuits": ctx.preset.random_draws > 0,
                    "variants": bool(ctx.preset.variants) and ctx.settings.circuit_ranking == "analytic"}
        return cls(**{k: defaults[k] if overrides.get(k) is None else bool(overrides[k]) for k in defaults})


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    enabled: Callable[[Options], bool] = lambda options: True


STAGES: tuple[Stage, ...] = (
    Stage("elicit_train", lambda ctx, o: elicit.run(ctx, "train")),
    Stage("capture", lambda ctx, o: capture.run(ctx)),
    Stage("directions", lambda ctx, o: directions_stage.run(ctx)),
    Stage("elicit_test", lambda ctx, o: elicit.run(ctx, "test")),
    Stage(steer.SWEEP_STAGE, lambda ctx, o: steer.run_sweep(ctx, directions_stage.load(ctx)[0]["dirs_mlp"]),
          enabled=lambda o: o.alpha_sweep),
    Stage("steer_test", lambda ctx, o: steer.run(ctx, alpha_sweep=o.alpha_sweep)),
    Stage("components", lambda ctx, o: components.run(ctx)),
    Stage("validation", lambda ctx, o: validation.run(ctx), enabled=lambda o: o.validation),
    Stage("causal", lambda ctx, o: causal.run(ctx), enabled=lambda o: o.causal),
    Stage(sublayer.STAGE, lambda ctx, o: sublayer.run(ctx)),
    Stage(circuit_stage.STAGE, lambda ctx, o: circuit_stage.run(ctx)),
    Stage(modulate.SWEEP_STAGE, lambda ctx, o: modulate.run_scale_sweep(ctx), enabled=lambda o: o.scale_sweep),
    Stage(modulate.STAGE, lambda ctx, o: modulate.run(ctx, scale_sweep=o.scale_sweep)),
    Stage(modulate.BASELINE_STAGE, lambda ctx, o: modulate.run_baseline(ctx)),
    Stage(random_circuits.STAGE, lambda ctx, o: random_circuits.run(ctx), enabled=lambda o: o.random_circuits),
    Stage(other_ranking.STAGE, lambda ctx, o: other_ranking.run(ctx), enabled=lambda o: o.causal),
    Stage(variants.PIPELINE_TRAIN_STAGE, lambda ctx, o: variants.run_train(
        ctx, _preset_variants(ctx), variants.PIPELINE_TRAIN_STAGE, every_tuned=False), enabled=lambda o: o.variants),
    Stage(variants.PIPELINE_TEST_STAGE, lambda ctx, o: variants.run_test(
        ctx, variants.PIPELINE_RULE, variants.PIPELINE_TRAIN_STAGE, variants.PIPELINE_TEST_STAGE),
        enabled=lambda o: o.variants),
    Stage(compare.STAGE, lambda ctx, o: compare.run(ctx)),
)
STAGE_NAMES = tuple(s.name for s in STAGES) + ("report",)


def _preset_variants(ctx: StageContext) -> tuple[str, ...]:
    if not ctx.preset.variants:
        raise ValueError(f"--circuit_variants: preset {ctx.preset.name} names no circuit variants")
    return ctx.preset.variants


def stage_headline(summary: dict[str, Any]) -> str:
    """What a stage line says besides its time: how many items, and the judged and fluent accuracy of
    a judged stage."""
    parts = []
    count = next((summary[k] for k in ("items", "rows", "judged") if isinstance(summary.get(k), int)), None)
    if count is not None:
        parts.append(f"{count} items")
    accuracy = summary.get("accuracy")
    if isinstance(accuracy, dict) and accuracy.get("accuracy") is not None:
        parts.append(f"accuracy {accuracy['accuracy']:.1f}% ({accuracy['matched']}/{accuracy['total']})")
        if accuracy.get("fluent_accuracy") is not None:
            parts.append(f"fluent {accuracy['fluent_accuracy']:.1f}% ({accuracy['fluent_matched']}/{accuracy['total']})")
    return "".join(f"{part}, " for part in parts)


def _finished_stamp(ctx: StageContext, name: str) -> str | None:
    path = ctx.run.path / name / "done.json"
    return read_json(path).get("finished") if path.is_file() else None


class _Clock:
    """Wall and process-CPU seconds of each stage, kept in <run>/timings.json across invocations.

    CPU seconds (all threads of this process) are recorded too: on a shared machine they estimate
    the cost better than the wall time does."""

    def __init__(self, ctx: StageContext) -> None:
        self.path = ctx.run.path / report.TIMINGS_NAME
        stored = read_json(self.path) if self.path.is_file() else {}
        self.wall: dict[str, float] = dict(stored.get("wall_seconds", {}))
        self.cpu: dict[str, float] = dict(stored.get("cpu_seconds", {}))

    def start(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def stop(self, name: str, started: tuple[float, float]) -> float:
        self.wall[name] = round(time.perf_counter() - started[0], 2)
        self.cpu[name] = round(time.process_time() - started[1], 2)
        write_json(self.path, {"wall_seconds": self.wall, "cpu_seconds": self.cpu})
        return self.wall[name]


def run_pipeline(ctx: StageContext, options: Options | None = None, *, until: str | None = None) -> dict[str, Any]:
    """Run every enabled stage in order (stopping after `until`, if given), then the report.

    Returns {"summaries": {stage: summary}, "timings": {stage: wall seconds}, "skipped": [stages reused]}.
    """
    if until is not None and until not in STAGE_NAMES:
        raise ValueError(f"--until={until!r}: unknown stage; expected one of {', '.join(STAGE_NAMES)}")
    options = options or Options.for_preset(ctx)
    clock = _Clock(ctx)
    summaries, skipped = {}, []
    enabled = [stage for stage in STAGES if stage.enabled(options)]
    logging.info("pipeline: stages off for this run: %s",
                 ", ".join(s.name for s in STAGES if s not in enabled) or "none")
    for number, stage in enumerate(enabled, start=1):
        before = _finished_stamp(ctx, stage.name)
        started = clock.start()
        summaries[stage.name] = stage.run(ctx, options)
        label = f"stage {number:2d}/{len(enabled) + 1} {stage.name:<20}"
        if before is not None and _finished_stamp(ctx, stage.name) == before:
            skipped.append(stage.name)
            say("%s done earlier, skipped", label)
        else:
            say("%s %s%.1f s", label, stage_headline(summaries[stage.name]), clock.stop(stage.name, started))
        if stage.name == until:
            return {"summaries": summaries, "timings": dict(clock.wall), "skipped": skipped}
    started = clock.start()
    report.run(ctx)
    say("stage %2d/%d %-20s %.1f s", len(enabled) + 1, len(enabled) + 1, "report", clock.stop("report", started))
    summaries["report"] = report.run(ctx)  # again, so summary.json lists the report's own time
    return {"summaries": summaries, "timings": dict(clock.wall), "skipped": skipped}
