"""S2, S5, S6a-b: the fused last-token capture, then emotion directions, difference vectors, residual
scale, the reference direction and the geometry plots.

    python -m experiments.directions --out=runs/quick [--directions_rule=all] [--min_complete_groups=12]

Needs the train-split elicitation of the same run (`python -m experiments.elicit --split=train`).
Writes <out>/capture/ (activations.npz, items.json) and <out>/directions/ (directions.npz,
geometry.json, PNG plots). The rule that selected the items is recorded in both.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.stages import directions_stage

define_flags()
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    ctx = context_from_flags(FLAGS)
    summary = directions_stage.run(ctx)
    logging.info("directions: %s", summary)
    print(f"directions from {summary['items']} items, rule {summary['rule']!r}, {summary['complete_groups']} "
          f"complete groups -> {ctx.run.path / directions_stage.STAGE}")


if __name__ == "__main__":
    run_launcher(main)
