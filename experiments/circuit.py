"""S6e-S6f on an existing run directory: global emotion circuits and their overlap.

    python -m experiments.circuit --out=runs/quick [--budget=literal] [--ratio_mode=auto]

Needs the components and sublayer stages of the same run. Writes <out>/circuit/.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.stages import circuit_stage

define_flags()
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    ctx = context_from_flags(FLAGS)
    summary = circuit_stage.run(ctx)
    logging.info("circuit: %s", summary)
    print(f"circuit -> {ctx.run.path / circuit_stage.STAGE}")


if __name__ == "__main__":
    run_launcher(main)
