"""Rate replies written by anything (another tool, another run): emotion match, fluency and both.

    python -m experiments.rate --input=IN.jsonl --output=OUT.jsonl [--model=smollm2-135m-instruct] [--judge=offline]

Input rows: `text`, `emotion` and either `scenario` + `event` (rendered with the neutral prompt of
method.md §4.2) or `messages` (a chat message list starting with a system message). Output rows: the
input rows plus `match`, `fluent`, `fluent_match`, `perplexity` and `reason` (emojax.judge.rating).
Every row is checked before anything runs: a bad row fails with its line number and field, and the
output is written atomically, whole or not at all.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

from emojax.judge import SPEC_HELP, make_judge
from emojax.judge.fluency import DEFAULT_RULE, FluencyRule
from emojax.judge.rating import rate, read_rows
from emojax.launch.launcher import run_launcher
from emojax.loading import DEFAULT_MODEL, load_model
from emojax.runs import InputError, write_jsonl

flags.DEFINE_string("input", None, "JSON-lines file of replies to rate.")
flags.DEFINE_string("output", None, "JSON-lines file to write (replaced atomically).")
flags.DEFINE_string("model", DEFAULT_MODEL, "Model whose perplexity gates fluency: registered name, HF directory "
                    "or .gguf file (the shipped fluency rule was fitted on the default model).")
flags.DEFINE_string("judge", "offline", f"Judge: {SPEC_HELP}.")
flags.DEFINE_string("fluency_rule", str(DEFAULT_RULE), "Fluency rule JSON (emojax.judge.fluency).")
flags.DEFINE_integer("batch_size", 32, "Rows per forward of the perplexity pass.")
flags.mark_flags_as_required(["input", "output"])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size}: expected at least 1")
    try:
        rows, prompts = read_rows(FLAGS.input)
        rule = FluencyRule.load(FLAGS.fluency_rule)
    except (InputError, FileNotFoundError, ValueError) as err:
        sys.exit(f"rate: {err}")
    judge = make_judge(FLAGS.judge)
    model = load_model(FLAGS.model)
    rated = rate(rows, prompts, model=model, judge=judge, rule=rule, batch_size=FLAGS.batch_size)
    write_jsonl(FLAGS.output, rated)
    matched = sum(r["match"] for r in rated)
    fluent = sum(r["fluent"] for r in rated)
    both = sum(r["fluent_match"] for r in rated)
    logging.info("rated %d replies with %s", len(rated), getattr(judge, "identity", FLAGS.judge))
    print(f"{len(rated)} replies: {matched} match, {fluent} fluent, {both} fluent and matching -> {FLAGS.output}")


if __name__ == "__main__":
    run_launcher(main)
