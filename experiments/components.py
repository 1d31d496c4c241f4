"""S4a-S4b on an existing run directory: neuron contributions and head importances of every emotion.

    python -m experiments.components --out=runs/quick

Needs the capture and directions stages of the same run (`python -m experiments.pipeline
--until=directions --out=...` makes them). Writes <out>/components/.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.stages import components

define_flags()
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    ctx = context_from_flags(FLAGS)
    summary = components.run(ctx)
    logging.info("components: %s", summary)
    print(f"components -> {ctx.run.path / components.STAGE}")


if __name__ == "__main__":
    run_launcher(main)
