"""Rating many rows: length checks up front, rows bucketed by length, resumable chunks, the judge-failure rule.

- Every row's prompt + reply is measured in tokens before anything runs; a row over the model's maximum
  position is refused naming its line (a row longer than `CHARS_PER_POSITION` characters per position is
  refused before it is tokenised).
- Rows are sorted by that length and cut into chunks of `batch_size` rows; each chunk is padded to its own
  longest row (rounded up to 16), so padding is bounded by the spread within a chunk, and memory by one
  chunk's tensors, whatever the row count.
- Chunks are a `ChunkedJob` in a work directory next to the output, so an interrupted rate resumes at
  the chunk it was in; progress is reported as chunks finish (a console line at most every 30 s).
- The judge-failure rule of the pipeline (emojax.judge.verdicts): rows whose verdict failed in an earlier
  run are judged again; more than `MAX_JUDGE_ERROR_FRACTION` failed rows is a `RateJudgeFailure` naming
  their lines, and nothing is written to the output.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from absl import logging

from emojax.judge.fluency import FluencyRule, as_json, measures
from emojax.judge.perplexity import batch_perplexities, reply_batch
from emojax.method.prompts import CHARS_PER_POSITION
from emojax.method.prompts import Messages, tokenize_prompts
from emojax.runs import ChunkedJob, InputError, read_jsonl, write_jsonl
from emojax.runs.progress import DEFAULT_LOG_EVERY_S
from emojax.judge.verdicts import MAX_JUDGE_ERROR_FRACTION, judge_failed, verdicts

MEASURE_SLICE = 256          # rows tokenised at once while measuring lengths
RETRIED_NAME = "retried.jsonl"
_LISTED_LINES = 10


class RateJudgeFailure(InputError):
    """The judge failed on more than MAX_JUDGE_ERROR_FRACTION of the rows; nothing was written."""


@dataclasses.dataclass(frozen=True)
class Rows:
    """The rows to rate: input line numbers, the rows, their prompts and replies."""

    path: Path
    lines: list[int]
    rows: list[dict[str, Any]]
    prompts: list[Messages]

    @property
    def texts(self) -> list[str]:
        return [row["text"] for row in self.rows]


def token_lengths(model: Any, rows: Rows) -> np.ndarray:
    """[n] prompt + reply tokens of each row; the first row over the model's maximum position is refused."""
    limit = model.config.max_position
    for line, prompt, text in zip(rows.lines, rows.prompts, rows.texts):
        chars = sum(len(m["content"]) for m in prompt) + len(text)
        if chars > CHARS_PER_POSITION * limit:
            raise InputError(f"{rows.path} line {line}: its prompt and text are {chars:,} characters, far more than "
                             f"the model's {limit:,} positions hold; shorten it, or rate it with a --model of a "
                             "longer context")
    lengths = np.zeros(len(rows.rows), np.int64)
    for start in range(0, len(rows.rows), MEASURE_SLICE):
        stop = min(start + MEASURE_SLICE, len(rows.rows))
        prompt_lengths = tokenize_prompts(model.tokenizer, rows.prompts[start:stop]).lengths
        replies = model.tokenizer(rows.texts[start:stop], add_special_tokens=False)["input_ids"]
        lengths[start:stop] = prompt_lengths + np.array([len(ids) for ids in replies])
    over = np.flatnonzero(lengths > limit)
    if over.size:
        i = int(over[0])
        raise InputError(f"{rows.path} line {rows.lines[i]}: its prompt and text are {int(lengths[i]):,} tokens, more "
                         f"than the model's maximum position {limit:,}; shorten it, or rate it with a --model of a "
                         "longer context")
    return lengths


def length_order(lengths: np.ndarray) -> np.ndarray:
    """Row indices sorted by length (ties in input order): consecutive chunks hold similar lengths."""
    return np.lexsort((np.arange(len(lengths)), lengths))


def rate_chunk(model: Any, judge: Any, rule: FluencyRule, rows: Rows, indices: Sequence[int],
               size: int) -> list[dict[str, Any]]:
    """Verdict, perplexity and fluent of rows `indices`; the perplexity forward always has `size` rows
    (the last one repeated), so a chunk shape compiles once per padded width."""
    indices = [int(i) for i in indices]
    texts = [rows.texts[i] for i in indices]
    judged = verdicts(judge(texts, [rows.rows[i]["emotion"] for i in indices]), len(indices))
    batch = reply_batch(model.tokenizer, [rows.prompts[i] for i in indices], texts)
    filled = np.minimum(np.arange(size), len(indices) - 1)
    found = measures(batch_perplexities(model.params, model.config, batch, filled)[: len(indices)], texts)
    return [{"row": i, **verdict, "perplexity": as_json(m)["perplexity"], "fluent": int(f)}
            for i, verdict, m, f in zip(indices, judged, found, rule.fluent(found))]


def output_rows(rows: Rows, results: Mapping[int, Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """The input rows in input order with match, fluent, fluent_match, perplexity and reason added."""
    for i, row in enumerate(rows.rows):
        result = results[i]
        match, fluent = int(result["match"]), int(result["fluent"])
        reason = f"judge error: {result['error']}" if result["error"] is not None else result["reason"]
        yield {**row, "match": match, "fluent": fluent, "fluent_match": int(match == 1 and fluent == 1),
               "perplexity": result["perplexity"], "reason": reason}


def rate_in_memory(rows: Rows, *, model: Any, judge: Any, rule: FluencyRule, batch_size: int) -> list[dict[str, Any]]:
    """Every row rated, bucketed by length, nothing written to disk."""
    order = length_order(token_lengths(model, rows))
    size = max(1, min(batch_size, len(order)))
    results = {r["row"]: r for start in range(0, len(order), size)
               for r in rate_chunk(model, judge, rule, rows, order[start:start + size], size)}
    return list(output_rows(rows, results))


def work_dir(output: Path) -> Path:
    """Where an unfinished rate keeps its chunks: next to the output, removed once it is written."""
    return output.with_name(output.name + ".parts")


def rate_to_file(rows: Rows, output: Path, *, model: Any, judge: Any, rule: FluencyRule, batch_size: int,
                 input_sha256: str, log_every_s: float = DEFAULT_LOG_EVERY_S) -> dict[str, int]:
    """Rate every row in resumable chunks and write the output atomically; returns the counts of rows,
    matches, fluent rows, fluent matches and judge failures (at most MAX_JUDGE_ERROR_FRACTION of the
    rows, counted as non-matches)."""
    order = length_order(token_lengths(model, rows))
    size = max(1, min(batch_size, len(order)))
    spec = {"input": input_sha256, "model": model.source_hash, "judge": getattr(judge, "identity", type(judge).__name__),
            "rule": rule.identity, "batch_size": size, "order": hashlib.sha256(order.tobytes()).hexdigest()}
    name = "rate-" + hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()[:16]
    job = ChunkedJob(work_dir(output), name, len(order), size, spec)
    fresh: set[int] = set()  # rows judged by this process: a failure there is not retried at once

    def compute(start: int, stop: int) -> list[dict[str, Any]]:
        fresh.update(int(i) for i in order[start:stop])
        return rate_chunk(model, judge, rule, rows, order[start:stop], size)

    results = {r["row"]: r for r in job.run(compute, desc=f"rate {rows.path.name}", log_every_s=log_every_s)}
    results = _retry_failed(judge, job.path / RETRIED_NAME, rows, results, fresh)
    failed = [i for i in sorted(results) if judge_failed(rows.texts[i], results[i])]
    _check_failures(rows, output, results, failed)
    counts = {"rows": len(rows.rows), "match": 0, "fluent": 0, "fluent_match": 0, "judge_failures": len(failed)}

    def counted() -> Iterator[dict[str, Any]]:
        for row in output_rows(rows, results):
            for key in ("match", "fluent", "fluent_match"):
                counts[key] += row[key]
            yield row

    write_jsonl(output, counted())
    shutil.rmtree(work_dir(output), ignore_errors=True)
    return counts


def _retry_failed(judge: Any, path: Path, rows: Rows, results: dict[int, dict[str, Any]],
                  fresh: set[int]) -> dict[int, dict[str, Any]]:
    """`results` with the verdicts of rows judged again (kept in `path`): rows that failed in an earlier
    run are judged again now, alone."""
    retried = {int(r["row"]): r for r in read_jsonl(path)} if path.is_file() else {}
    current = {i: {**r, **retried.get(i, {})} for i, r in results.items()}
    again = [i for i in sorted(current) if i not in fresh and judge_failed(rows.texts[i], current[i])]
    if again:
        logging.info("%s: judging again the %d rows the judge failed on", rows.path, len(again))
        texts = [rows.texts[i] for i in again]
        for i, verdict in zip(again, verdicts(judge(texts, [rows.rows[i]["emotion"] for i in again]), len(again))):
            retried[i] = {"row": i, **verdict}
        write_jsonl(path, [retried[i] for i in sorted(retried)])
    return {i: {**r, **retried.get(i, {})} for i, r in results.items()}


def _check_failures(rows: Rows, output: Path, results: Mapping[int, Mapping[str, Any]], failed: list[int]) -> None:
    if not failed:
        return
    share = len(failed) / len(rows.rows)
    lines = [rows.lines[i] for i in failed]
    listed = ", ".join(map(str, lines[:_LISTED_LINES])) + (f" and {len(lines) - _LISTED_LINES} more"
                                                           if len(lines) > _LISTED_LINES else "")
    first = results[failed[0]]["error"]
    if share > MAX_JUDGE_ERROR_FRACTION:
        raise RateJudgeFailure(f"{rows.path}: the judge failed on {len(failed)} of {len(rows.rows)} rows ({share:.0%}, "
                               f"more than the {MAX_JUDGE_ERROR_FRACTION:.0%} allowed; lines {listed}; first error: "
                               f"{first}); nothing was written to {output}: fix the judge and run the same command "
                               "again, which judges only those rows again")
    logging.warning("%s: the judge failed on %d of %d rows (lines %s; %s); they count as non-matches", rows.path,
                    len(failed), len(rows.rows), listed, first)
