"""S3: direction steering of the test split (neutral prompt, rms-scaled MLP directions on P_last),
judged; optionally an alpha sweep on the TRAIN split whose best alpha is then used.

    python -m experiments.steer --out=runs/quick [--alpha_sweep [--alphas=1.7,3.5,6.9]] [--steer_alpha=8]

Needs the directions stage of the same run. Writes <out>/steer_test/ (records, accuracy, alpha.json)
and, with --alpha_sweep, <out>/steer_sweep_train/ (per-alpha records and accuracy, sweep.json/csv/png).
"""
from __future__ import annotations

from absl import app, flags, logging

from emojax.stages import steer
from emojax.stages.launch import context_from_flags, define_flags, list_flag, no_extra_arguments, run_launcher

define_flags()
flags.DEFINE_bool("alpha_sweep", False, "Sweep alpha on the train split and steer the test split with the best.")
flags.DEFINE_list("alphas", None, "Alpha grid of --alpha_sweep (default: 0.5, 1, 2, 3 times the transferred alpha).")
flags.DEFINE_integer("sweep_per_theme", None, "Records per theme of the train split used by the sweep (default all).")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    alphas = None
    if FLAGS.alphas is not None:
        alphas = list_flag("alphas", FLAGS.alphas, float, "positive numbers", positive=True)
    if FLAGS.sweep_per_theme is not None and FLAGS.sweep_per_theme < 1:
        raise app.UsageError(f"--sweep_per_theme={FLAGS.sweep_per_theme}: expected a positive count")
    ctx = context_from_flags(FLAGS)
    summary = steer.run(ctx, alpha_sweep=FLAGS.alpha_sweep, alphas=alphas, sweep_per_theme=FLAGS.sweep_per_theme)
    logging.info("steering: %s", summary)
    print(f"steering accuracy {summary['accuracy']['accuracy']}% ({summary['accuracy']['matched']}/"
          f"{summary['accuracy']['total']}) at alpha {summary['alpha']:g} ({summary['alpha_source']}) "
          f"-> {ctx.run.path / steer.STAGE}")


if __name__ == "__main__":
    run_launcher(main)
