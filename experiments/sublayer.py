"""S6a-S6d on an existing run directory: sublayer causal influence for every emotion.

    python -m experiments.sublayer --out=runs/quick

Needs the capture and directions stages of the same run (`python -m experiments.pipeline
--until=directions --out=...` makes them). Writes <out>/sublayer/.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, list_flag, no_extra_arguments, run_launcher
from emojax.method.hparams import INFLUENCE_ALPHAS
from emojax.stages import sublayer

define_flags()
flags.DEFINE_list("alphas", [str(a) for a in INFLUENCE_ALPHAS], "Dose multipliers alpha (dose = alpha * sigma).")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    alphas = list_flag("alphas", FLAGS.alphas, float, "positive numbers", positive=True)
    ctx = context_from_flags(FLAGS)
    summary = sublayer.run(ctx, alphas)
    logging.info("sublayer: %s", summary)
    print(f"sublayer -> {ctx.run.path / sublayer.STAGE}")


if __name__ == "__main__":
    run_launcher(main)
