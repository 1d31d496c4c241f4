"""S1: prompted elicitation and judging of a split; on the train split this is the accepted set, on the
test split the prompting baseline.

    python -m experiments.elicit --out=runs/quick --split=train
    python -m experiments.elicit --out=runs/quick --split=bundled:test
    python -m experiments.elicit --out=runs/official --train=official --split=train --preset=full

--split names the role (train, test or both) or the dataset given as --train / --test. Writes
<out>/elicit_{train,test}/: records.jsonl, accepted.jsonl, rejected.jsonl, accuracy.json, accuracy.md.
A killed run resumes at the chunk it was generating.
"""
from __future__ import annotations

from absl import app, flags, logging

from emojax.launch.launcher import context_from_flags, define_flags, no_extra_arguments, run_launcher
from emojax.stages import elicit

define_flags()
flags.DEFINE_string("split", "both", "Which split to elicit: train, test, both, or the value of --train / --test.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def splits_to_run(value: str, train: str, test: str) -> tuple[str, ...]:
    """The roles named by --split (a role name, 'both', or the dataset spec of --train or --test)."""
    if value == "both":
        return ("train", "test")
    if value in ("train", train):
        return ("train",)
    if value in ("test", test):
        return ("test",)
    raise app.UsageError(f"--split={value!r}: expected train, test, both, --train ({train!r}) or --test ({test!r})")


def main(argv: list[str]) -> None:
    no_extra_arguments(argv)
    roles = splits_to_run(FLAGS.split, FLAGS.train, FLAGS.test)
    ctx = context_from_flags(FLAGS)
    for role in roles:
        summary = elicit.run(ctx, role)
        logging.info("elicitation (%s): %s", role, summary)
        overall = summary["accuracy"]
        print(f"{role}: prompting accuracy {overall['accuracy']}% ({overall['matched']}/{overall['total']}) "
              f"-> {ctx.run.path / elicit.stage_name(role)}")


if __name__ == "__main__":
    run_launcher(main)
