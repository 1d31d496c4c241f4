"""Circuit-modulation variants on an existing run directory: each tuned on the TRAIN split by the one
protocol, then what the choice rules picked on the test split (emojax.stages.variants).

    python -m experiments.emotion_variants --preset=standard --out=runs/standard --split=train
    python -m experiments.emotion_variants --preset=standard --out=runs/standard --split=train \
        --variants=budget_x2,neurons_only
    python -m experiments.emotion_variants --preset=standard --out=runs/standard --split=test --rule=per_emotion

Needs the run's directions, components, sublayer and circuit stages (and its steering tuning for
the steer_* variants). Writes <out>/variant_<name>/, <out>/variants_train/ (variants.json,
variants.md) and <out>/variants_test_<rule>/.
"""
from __future__ import annotations

from absl import flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.stages import variants

define_flags()
flags.DEFINE_list("variants", [], f"Variants to tune (default: all): {', '.join(variants.BY_NAME)}.")
flags.DEFINE_enum("split", "train", ["train", "test"], "train: tune the variants and write the table; test: run "
                  "what --rule chose on train on the test split.")
flags.DEFINE_enum("rule", "per_emotion", list(variants.RULES), "The choice rule whose configuration --split=test runs.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    ctx = context_from_flags(FLAGS)
    if FLAGS.split == "train":
        summary = variants.run_train(ctx, FLAGS.variants)
        logging.info("variants on train:\n%s", variants.markdown(summary["rows"], summary["items_per_emotion"]))
        logging.info("one-variant rule: %s; per-emotion rule: %s", summary["one_variant"], summary["per_emotion"])
    else:
        logging.info("variants on test: %s", variants.run_test(ctx, FLAGS.rule))


if __name__ == "__main__":
    run_launcher(main)
