"""§14.1 on an existing run directory: ablation and enhancement of the top-k neurons and heads against
random components of the same layer.

    python -m experiments.validation --out=runs/quick
    python -m experiments.validation --out=runs/quick --layers=14,23 --prompts_per_emotion=4

Needs the components stage of the same run (`python -m experiments.components --out=...`). Writes
<out>/validation/.
"""
from __future__ import annotations

from absl import app, flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, list_flag, no_extra_arguments, run_launcher
from emojax.stages import validation

define_flags()
flags.DEFINE_list("layers", [], "Layers to validate; default: the original's layers 13 and 22 at the same "
                  "fractional depth.")
flags.DEFINE_integer("prompts_per_emotion", validation.PROMPTS_PER_EMOTION,
                     "Emotion prompts (and their neutral prompts) per emotion.", lower_bound=1)
flags.DEFINE_integer("draws", None, "Random control sets per k (default and minimum: the preset's validation_draws).")
flags.DEFINE_list("lambdas", [str(x) for x in validation.LAMBDAS], "Enhancement scales lambda.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    layers = list_flag("layers", FLAGS.layers, int, "layer indices") or None
    lambdas = list_flag("lambdas", FLAGS.lambdas, float, "positive numbers", positive=True)
    if FLAGS.draws is not None and FLAGS.draws < 1:
        raise app.UsageError(f"--draws={FLAGS.draws}: expected a positive count")
    summary = validation.run(context_from_flags(FLAGS), layers=layers, prompts_per_emotion=FLAGS.prompts_per_emotion,
                             draws=FLAGS.draws, lambdas=lambdas)
    logging.info("validation: %s", summary)


if __name__ == "__main__":
    run_launcher(main)
