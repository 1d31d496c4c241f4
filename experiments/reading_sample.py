"""Check the judge on a run's own replies: draw a blind, stratified sample to read, then score the readings.

    python -m experiments.reading_sample --run=runs/x --out=runs/x/reading [--stages=elicit_test,steer_test,modulate_test]
    # read OUT/to_read.jsonl with ../shared/data/labels/rubric.md; write OUT/readings.jsonl: {"id", "match", "fluent"}
    python -m experiments.reading_sample --run=runs/x --out=runs/x/reading --score

The first command writes OUT/to_read.jsonl (shuffled rows holding only id, target, scenario, event and text)
and OUT/key.jsonl (each row's stage, record key, the judge's verdicts and its stratum); it refuses to replace
an existing key, whose readings would no longer match. --score checks that every sampled reply is read once,
then writes OUT/agreement.json and prints, per stage, the judge's fluent_match agreement and kappa with the
reading and its rate against the read rate's 95% interval (emojax.evaluation.reading), each figure an
estimate for the whole stage.
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags

from emojax.evaluation.reading import (check_key_matches, draw_sample, load_stage_records, markdown_table,
                                      read_key, read_readings, score_sample)
from emojax.launch.launcher import run_launcher
from emojax.runs import InputError, write_json, write_jsonl

flags.DEFINE_string("run", None, "Run folder whose judged stages are sampled.")
flags.DEFINE_string("out", None, "Folder for to_read.jsonl, key.jsonl, readings.jsonl and agreement.json.")
flags.DEFINE_list("stages", ["elicit_test", "steer_test", "modulate_test"], "Judged stages to sample.")
flags.DEFINE_integer("per_stratum", 8, "Replies drawn per stage x target emotion x judged fluent_match.")
flags.DEFINE_integer("seed", 0, "Seed of the draw and of the shuffle.")
flags.DEFINE_bool("score", False, "Score OUT/readings.jsonl instead of drawing a sample.")
flags.mark_flags_as_required(["run", "out"])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    out = Path(FLAGS.out)
    key_path = out / "key.jsonl"
    if FLAGS.score:
        key = read_key(key_path)
        records = load_stage_records(Path(FLAGS.run), sorted({row["stage"] for row in key}))
        check_key_matches(key, records, key_path)
        figures = score_sample(key, read_readings(out / "readings.jsonl", key), records)
        write_json(out / "agreement.json", figures)
        print(markdown_table(figures))
        return
    if key_path.exists():
        raise InputError(f"{key_path} exists: its readings would no longer match a new sample; choose another --out")
    if FLAGS.per_stratum < 1:
        raise app.UsageError(f"--per_stratum={FLAGS.per_stratum}: expected at least 1")
    blind, key = draw_sample(load_stage_records(Path(FLAGS.run), FLAGS.stages), FLAGS.per_stratum, FLAGS.seed)
    write_jsonl(out / "to_read.jsonl", blind)
    write_jsonl(key_path, key)
    print(f"{len(blind)} replies to read -> {out / 'to_read.jsonl'}; write {out / 'readings.jsonl'} "
          f"({{\"id\", \"match\", \"fluent\"}} per line, ../shared/data/labels/rubric.md), then rerun with --score")


if __name__ == "__main__":
    run_launcher(main)
