"""S3: direction steering of the test split (neutral prompt, rms-scaled MLP directions on P_last),
judged; optionally with alpha tuned on the TRAIN split first (the protocol of emojax.stages.tuning).

    python -m experiments.steer --out=runs/quick [--alpha_sweep [--per_emotion_dose]] [--steer_alpha=8]

Needs the directions stage of the same run. Writes <out>/steer_test/ (records, accuracy, alpha.json)
and, with --alpha_sweep, <out>/steer_sweep_train/ (per-alpha records and accuracy, sweep.json/csv,
tuning.png) on the preset's train subsample.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.stages import steer

define_flags()
flags.DEFINE_bool("alpha_sweep", False, "Tune alpha on the train split and steer the test split with the chosen one.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    ctx = context_from_flags(FLAGS)
    summary = steer.run(ctx, alpha_sweep=FLAGS.alpha_sweep)
    logging.info("steering: %s", summary)
    print(f"steering accuracy {summary['accuracy']['accuracy']}% ({summary['accuracy']['matched']}/"
          f"{summary['accuracy']['total']}) at alpha {summary['alpha']} ({summary['alpha_source']}) "
          f"-> {ctx.run.path / steer.STAGE}")


if __name__ == "__main__":
    run_launcher(main)
