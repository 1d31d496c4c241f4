"""Rate replies written by anything (another tool, another run): emotion match, fluency and both.

    python -m experiments.rate --input=IN.jsonl --output=OUT.jsonl [--model=smollm2-135m-instruct] [--judge=offline]

Input rows: `text`, `emotion` and either `scenario` + `event` (rendered with the neutral prompt of
method.md §4.2) or `messages` (a chat message list starting with a system message). Output rows: the
input rows plus `match`, `fluent`, `fluent_match`, `perplexity` and `reason` (emojax.judge.rating).
Every row is checked before anything runs: a bad row, or one longer than the model's maximum position,
fails with its line number. Rows are rated in chunks of similar length, kept in OUT.jsonl.parts/ until
the output is written (atomically, whole or not at all), so an interrupted rate resumes where it
stopped. More than 5% of rows whose verdict failed is an error naming them (exit status 2); the same
command then judges only those rows again (emojax.judge.rate_chunks).
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging

from emojax.judge import SPEC_HELP
from emojax.judge.fluency import DEFAULT_RULE, FluencyRule
from emojax.judge.rate_chunks import rate_to_file
from emojax.judge.rating import read_numbered_rows
from emojax.launch.launcher import define_judge_deadline_flags, run_launcher
from emojax.launch.preflight import make_checked_judge
from emojax.loading import DEFAULT_MODEL, load_model
from emojax.runs import InputError
from emojax.runs.manifest import hash_file

flags.DEFINE_string("input", None, "JSON-lines file of replies to rate.")
flags.DEFINE_string("output", None, "JSON-lines file to write (replaced atomically).")
flags.DEFINE_string("model", DEFAULT_MODEL, "Model whose perplexity gates fluency: registered name, HF directory "
                    "or .gguf file (the shipped fluency rule was fitted on the default model).")
flags.DEFINE_string("judge", "offline", f"Judge: {SPEC_HELP}.")
flags.DEFINE_string("fluency_rule", str(DEFAULT_RULE), "Fluency rule JSON (emojax.judge.fluency).")
flags.DEFINE_integer("batch_size", 32, "Rows per chunk: one judge call and one forward of the perplexity pass.")
define_judge_deadline_flags()
flags.mark_flags_as_required(["input", "output"])
FLAGS = flags.FLAGS


def _check_paths(source: Path, output: Path) -> None:
    if output.resolve() == source.resolve() or (output.exists() and source.exists() and output.samefile(source)):
        raise app.UsageError(f"--output={output} is the --input file, which rating would replace; choose another "
                             "--output")
    if output.is_dir():
        raise app.UsageError(f"--output={output} is a directory; name a file")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size}: expected at least 1")
    source, output = Path(FLAGS.input), Path(FLAGS.output)
    _check_paths(source, output)
    rows = read_numbered_rows(source)
    try:
        rule = FluencyRule.load(FLAGS.fluency_rule)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"--fluency_rule={FLAGS.fluency_rule}: {err}") from None
    judge = make_checked_judge(FLAGS.judge, timeout_s=FLAGS.judge_timeout_s, deadline_s=FLAGS.judge_deadline_s)
    model = load_model(FLAGS.model)
    counts = rate_to_file(rows, output, model=model, judge=judge, rule=rule, batch_size=FLAGS.batch_size,
                          input_sha256=hash_file(source))
    logging.info("rated %d replies with %s (%d judge failures)", counts["rows"],
                 getattr(judge, "identity", FLAGS.judge), counts["judge_failures"])
    print(f"{counts['rows']} replies: {counts['match']} match, {counts['fluent']} fluent, {counts['fluent_match']} "
          f"fluent and matching -> {FLAGS.output}")


if __name__ == "__main__":
    run_launcher(main)
