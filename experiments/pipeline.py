"""Run the whole method end to end on one model: S1 to S7, comparison, report.

    python -m experiments.pipeline --preset=quick --out=runs/quick
    python -m experiments.pipeline --preset=standard --out=runs/standard
    python -m experiments.pipeline --preset=full --model=/path/to/model.gguf --test=/path/to/test.jsonl --out=runs/full

Re-running with the same --out resumes: finished stages are skipped. The run directory gets
summary.json and report.md at its root.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.launch.pipeline import STAGE_NAMES, Options, run_pipeline

define_flags()
flags.DEFINE_bool("alpha_sweep", None, "Tune the steering alpha on the train split (default: the preset's sweeps).")
flags.DEFINE_bool("scale_sweep", None, "Tune the circuit lambda on the train split (default: the preset's sweeps).")
flags.DEFINE_bool("random_circuits", None, "Random-circuit control on the test split (default: on when the preset "
                  "sets random_draws).")
flags.DEFINE_bool("causal", None, "Exhaustive causal scans and attribution (default: on when the preset sets causal_prompts).")
flags.DEFINE_bool("validation", None, "Ablation and enhancement curves with random controls (S4c) "
                  "(default: the preset's; off in quick).")
flags.DEFINE_bool("circuit_variants", None, "Tune the preset's circuit variants on train and run the per-emotion "
                  "choice among them on test (default: on when the preset names variants and members are ranked "
                  "analytically).")
flags.DEFINE_enum("until", None, list(STAGE_NAMES), "Stop after this stage.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    ctx = context_from_flags(FLAGS)
    options = Options.for_preset(ctx, alpha_sweep=FLAGS.alpha_sweep, scale_sweep=FLAGS.scale_sweep,
                                 causal=FLAGS.causal, validation=FLAGS.validation,
                                 random_circuits=FLAGS.random_circuits, variants=FLAGS.circuit_variants)
    result = run_pipeline(ctx, options, until=FLAGS.until)
    if "report" in result["summaries"]:
        logging.info("pipeline finished: %s", result["summaries"]["report"])
        print(f"report: {ctx.run.path / 'report.md'}")
    else:  # --until stopped before the report
        print(f"stopped after --until={FLAGS.until}; no report written (run without --until for it): {ctx.run.path}")


if __name__ == "__main__":
    run_launcher(main)
