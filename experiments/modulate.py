"""S7 on an existing run directory: circuit modulation of the test split, judged; the neutral baseline;
optionally the modulation-scale sweep on the TRAIN split.

    python -m experiments.modulate --out=runs/quick [--modulation_scale=1.5] [--scale_sweep]

Needs the directions and circuit stages of the same run. Writes <out>/modulate_test/,
<out>/baseline_test/ and, with --scale_sweep, <out>/modulate_sweep_train/.
"""
from __future__ import annotations

from absl import app, flags, logging

from emojax.stages import modulate
from emojax.stages.launch import context_from_flags, define_flags, list_flag, no_extra_arguments, run_launcher

define_flags()
flags.DEFINE_bool("baseline", True, "Also generate the unmodified neutral baseline and its false-match rate.")
flags.DEFINE_bool("scale_sweep", False, "Sweep the modulation scale on the train split and report the best.")
flags.DEFINE_list("scales", [str(s) for s in modulate.SCALE_GRID], "Scale grid of --scale_sweep.")
flags.DEFINE_integer("sweep_per_theme", None, "Sweep on this many train scenarios per theme (default: all).")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    scales = list_flag("scales", FLAGS.scales, float, "positive numbers", positive=True)
    if FLAGS.sweep_per_theme is not None and FLAGS.sweep_per_theme < 1:
        raise app.UsageError(f"--sweep_per_theme={FLAGS.sweep_per_theme}: expected a positive count")
    ctx = context_from_flags(FLAGS)
    if FLAGS.scale_sweep:
        logging.info("scale sweep: %s", modulate.run_scale_sweep(ctx, scales, FLAGS.sweep_per_theme))
    logging.info("circuit modulation: %s", modulate.run(ctx))
    if FLAGS.baseline:
        logging.info("neutral baseline: %s", modulate.run_baseline(ctx))


if __name__ == "__main__":
    run_launcher(main)
