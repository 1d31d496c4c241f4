"""§14.2 and §14.4 on an existing run directory: exhaustive causal neuron and head scans, attribution
patching, and the agreement of analytic, causal and gradient rankings.

    python -m experiments.causal --out=runs/quick --prompts_per_emotion=2
    python -m experiments.causal --out=runs/quick --prompts_per_emotion=2 --layers=8,14,20,26

Needs the capture and directions stages of the same run. Writes <out>/causal/.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, list_flag, no_extra_arguments, run_launcher
from emojax.stages import causal

define_flags()
flags.DEFINE_integer("prompts_per_emotion", None, "Prompts per emotion (default: the preset's causal_prompts; "
                     "0 skips the stage).", lower_bound=0)
flags.DEFINE_list("layers", [], "Layers of the causal scans (default: every layer; attribution always covers all).")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    layers = list_flag("layers", FLAGS.layers, int, "layer indices") or None
    summary = causal.run(context_from_flags(FLAGS), prompts_per_emotion=FLAGS.prompts_per_emotion, layers=layers)
    logging.info("causal: %s", summary)


if __name__ == "__main__":
    run_launcher(main)
