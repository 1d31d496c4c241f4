"""S7 on an existing run directory: circuit modulation of the test split, judged, optionally at the
lambda tuned on the TRAIN split first; the neutral baseline; the random-circuit control.

    python -m experiments.modulate --out=runs/quick [--scale_sweep [--per_emotion_dose]] [--modulation_scale=1.5]

Needs the directions and circuit stages of the same run. Writes <out>/modulate_test/,
<out>/baseline_test/, with --scale_sweep <out>/modulate_sweep_train/ and with --random_circuits
<out>/random_circuit_test/.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.stages import modulate, random_circuits

define_flags()
flags.DEFINE_bool("baseline", True, "Also generate the unmodified neutral baseline and its false-match rate.")
flags.DEFINE_bool("scale_sweep", False, "Tune lambda on the train split and modulate the test split with the chosen one.")
flags.DEFINE_bool("random_circuits", False, "Also run the random-circuit control at the chosen lambda.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    ctx = context_from_flags(FLAGS)
    logging.info("circuit modulation: %s", modulate.run(ctx, scale_sweep=FLAGS.scale_sweep))
    if FLAGS.baseline:
        logging.info("neutral baseline: %s", modulate.run_baseline(ctx))
    if FLAGS.random_circuits:
        logging.info("random-circuit control: %s", random_circuits.run(ctx))


if __name__ == "__main__":
    run_launcher(main)
