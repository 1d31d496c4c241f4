"""The loop every judged stage shares: batched generation in resumable chunks, judging, records.

Prompting (S1), steering (S3), circuit modulation (S7) and the neutral baseline all generate one reply
per item, judge it against the item's emotion and write the §3.3 records with accuracy tables. This
module holds that loop once:

- `Decoding`: the per-condition settings of method.md §6;
- `generate_in_chunks`: every prompt of a stage is tokenised once to one padded width, and every chunk
  is filled up to the same number of rows, so one compilation serves the whole stage; chunks are a
  `ChunkedJob`, so a killed stage resumes at the chunk it was in; replies generated from nan or inf
  logits raise `NonFiniteReplies` instead of reaching the judge as empty texts;
- `judge_in_chunks`: the judge in resumable chunks (an HTTP judge is slow); rows the judge failed on
  (an API error, an unparsable reply) are judged again, alone, on the next run, and more than
  `MAX_JUDGE_ERROR_FRACTION` of them fails the stage (`JudgeFailure`) instead of counting as verdicts;
- `fluency_in_chunks`: perplexity of every reply under the unmodified model given its prompt (one
  forward per chunk), distinct-n, repetition and the fitted `fluent` rule (emojax.judge.fluency); a
  record's `fluent_match` is its judge's match AND fluent;
- `write_judged_outputs`: records.jsonl, accepted.jsonl, rejected.jsonl, accuracy.json, accuracy.md.

Marking a stage done and skipping a finished one (fingerprints, output hashes) is
`emojax.runs.stage_record`, which every stage shares, judged or not.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from absl import logging

from emojax.data import Item
from emojax.evaluation.accuracy import accuracy_markdown, accuracy_tables
from emojax.generation.loop import generate
from emojax.judge.fluency import MEASURES, FluencyRule, as_json, measures
from emojax.judge.perplexity import batch_perplexities, reply_batch
from emojax.judge.verdicts import MAX_JUDGE_ERROR_FRACTION, judge_failed, verdicts
from emojax.method.prompts import tokenize_prompts
from emojax.model.config import ModelConfig
from emojax.model.interventions import Intervention
from emojax.runs import ChunkedJob, InputError, read_jsonl, write_json, write_jsonl, write_text
from emojax.runs.stage_record import digest, judge_identity, model_hash
from emojax.scan.memory_plan import decode_without_copy

PAD_MULTIPLE = 16          # prompt widths rounded up to this, so similar splits share a shape
JUDGE_CHUNK = 256
# A stage fails rather than finishes when the judge failed on more than this fraction of its replies:
# such rows would count as non-matches and make accuracies silently too low.
RETRIED_NAME = "retried.jsonl"   # in a judge job's directory: verdicts of rows judged again


class JudgeFailure(InputError):
    """The judge failed on too many replies of a stage; the stage is not marked done."""


class NonFiniteReplies(InputError):
    """Replies generated from nan or inf logits (empty, not verdicts); the stage is not marked done."""


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Greedy decoding settings of one condition (method.md §6)."""

    condition: str
    max_new_tokens: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    dtype: str = "float32"

    def generate_kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
                "repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "greedy": True}


# (min new, repetition penalty, no-repeat n-gram, dtype) per condition, as in the official runs.
_CONDITIONS = {
    "prompting": (0, 1.0, 0, "float32"),
    "steering": (10, 1.05, 3, "float32"),
    "circuit": (10, 1.1, 3, "float16"),
    "baseline": (10, 1.1, 3, "float16"),
}
# D12/D13 "harmonised": one decoding and one dtype for every condition (the circuit row's penalties).
_HARMONISED = (10, 1.1, 3, "float32")


def decoding_for(condition: str, max_new_tokens: int, harmonised: bool = False,
                 config: ModelConfig | None = None) -> Decoding:
    """§6 settings of `condition` with the preset's max_new_tokens (paper: 100); a model whose
    activations overflow float16 (`config.float16_overflows`) decodes float16 conditions in bfloat16."""
    if condition not in _CONDITIONS:
        raise ValueError(f"unknown generation condition {condition!r}; expected one of {sorted(_CONDITIONS)}")
    min_new, penalty, ngram, dtype = _HARMONISED if harmonised else _CONDITIONS[condition]
    if dtype == "float16" and config is not None and config.float16_overflows:
        dtype = "bfloat16"
    return Decoding(condition, max_new_tokens, min_new, penalty, ngram, dtype)


# ---------------------------------------------------------------------------------------------
# Generation and judging

RowIntervention = Callable[[np.ndarray], Intervention]


def generate_in_chunks(ctx: Any, directory: Path, keys: Sequence[str], prompts: Sequence[Any],
                       decoding: Decoding, *, fingerprint: Any, row_iv: RowIntervention | None = None,
                       job: str = "generate") -> list[dict[str, Any]]:
    """Greedy replies to `prompts` (chat messages), one record per prompt, resumable by chunk.

    Every chunk holds `ctx.preset.batch_size` rows (the last one repeats its final prompt to fill up)
    at one prompt width, so one compilation serves the stage. `row_iv(rows)` gives the intervention
    of the item indices `rows` (per-row fields [L, B, ...]), or None for none. A "judge" entry of
    `fingerprint` is ignored. Records: {key, gen_text, input_len, new_tokens, finished}.
    """
    if len(keys) != len(prompts) or not prompts:
        raise ValueError(f"generate_in_chunks: {len(keys)} keys for {len(prompts)} prompts")
    batch = tokenize_prompts(ctx.model.tokenizer, prompts, date_string=ctx.settings.date_string,
                             pad_multiple=PAD_MULTIPLE)
    n = len(prompts)
    size = min(ctx.preset.batch_size, n)
    dtype = None if decoding.dtype == str(ctx.model.params["embed"].dtype) else jnp.dtype(decoding.dtype)
    # Judging never changes what is generated, so a stage re-judged by another judge reuses its replies.
    if isinstance(fingerprint, Mapping):
        fingerprint = {k: v for k, v in fingerprint.items() if k != "judge"}
    spec = {"job": fingerprint, "model": model_hash(ctx), "decoding": decoding.to_json(), "rows": size,
            "prompts": hashlib.sha256(batch.tokens.tobytes() + batch.mask.tobytes()).hexdigest()}

    # Without a mesh the whole model sits on one device: drop the decode step's weight copy when that
    # device cannot hold it (same tokens, slower steps). A mesh shards the weights; it keeps the copy.
    low_memory = ctx.mesh is None and decode_without_copy(
        ctx.model.config, jnp.dtype(decoding.dtype), rows=size, prompt_tokens=batch.tokens.shape[1],
        new_tokens=decoding.max_new_tokens)
    if low_memory:
        logging.info("%s: generating without the decode step's weight copy (low_memory): it does not fit beside "
                     "the weights", _stage_label(ctx, directory))

    def compute(start: int, stop: int) -> list[dict[str, Any]]:
        rows = np.minimum(np.arange(start, start + size), n - 1)
        out = generate(ctx.model, (batch.tokens[rows], batch.mask[rows]), iv=None if row_iv is None else row_iv(rows),
                       batch_size=size, dtype=dtype, mesh=ctx.mesh, low_memory=low_memory,
                       **decoding.generate_kwargs())
        bad = [keys[i] for j, i in enumerate(range(start, stop)) if out.nonfinite[j]]
        if bad:
            raise NonFiniteReplies(f"{_stage_label(ctx, directory)}: the logits became nan or inf while generating "
                                   f"{len(bad)} of {stop - start} replies (first: {bad[0]}), which would be empty; "
                                   f"check the intervention's values and the dtype ({decoding.dtype})")
        return [{"key": keys[i], "gen_text": out.texts[j], "input_len": int(batch.lengths[i]),
                 "new_tokens": int(out.lengths[j]), "finished": bool(out.finished[j])}
                for j, i in enumerate(range(start, stop))]

    chunked = ChunkedJob(directory, f"{job}-{digest(spec)}", n, size, spec)
    return chunked.run(compute, desc=f"{directory.name} {job}")


def judge_in_chunks(ctx: Any, directory: Path, texts: Sequence[str], targets: Sequence[str], *,
                    job: str = "judge") -> list[dict[str, Any]]:
    """The judge's verdict {match, reason, error} on every (text, target emotion), resumable by chunk.

    Rows the judge failed on in an earlier run are judged again, alone; more than
    MAX_JUDGE_ERROR_FRACTION failed rows raise `JudgeFailure` (their verdicts stay on disk, so the
    next run judges only those rows again)."""
    spec = {"judge": judge_identity(ctx.judge), "texts": digest([list(texts), list(targets)])}
    fresh: set[int] = set()  # rows judged by this process: a failure there is not retried at once

    def compute(start: int, stop: int) -> list[dict[str, Any]]:
        fresh.update(range(start, stop))
        result = ctx.judge(list(texts[start:stop]), list(targets[start:stop]))
        return verdicts(result, stop - start)

    chunked = ChunkedJob(directory, f"{job}-{digest(spec)}", len(texts), JUDGE_CHUNK, spec)
    judged = chunked.run(compute, desc=f"{directory.name} {job}")
    judged = _retry_failed(ctx, chunked.path / RETRIED_NAME, texts, targets, judged, fresh)
    _check_judge_errors(_stage_label(ctx, directory), texts, judged)
    return judged


def _retry_failed(ctx: Any, path: Path, texts: Sequence[str], targets: Sequence[str],
                  judged: list[dict[str, Any]], fresh: set[int]) -> list[dict[str, Any]]:
    """`judged` with the verdicts of rows judged again (kept in `path`); rows that failed in an earlier
    run are judged again now, JUDGE_CHUNK at a time."""
    retried = {int(r["row"]): r["verdict"] for r in read_jsonl(path)} if path.is_file() else {}
    current = [retried.get(i, v) for i, v in enumerate(judged)]
    rows = [i for i, v in enumerate(current) if i not in fresh and judge_failed(texts[i], v)]
    if rows:
        logging.info("%s: judging again the %d replies the judge failed on", path.parent.parent.name, len(rows))
    for start in range(0, len(rows), JUDGE_CHUNK):
        batch = rows[start:start + JUDGE_CHUNK]
        result = ctx.judge([texts[i] for i in batch], [targets[i] for i in batch])
        retried.update(zip(batch, verdicts(result, len(batch))))
        write_jsonl(path, [{"row": i, "verdict": retried[i]} for i in sorted(retried)])
    return [retried.get(i, v) for i, v in enumerate(judged)]


def _check_judge_errors(stage: str, texts: Sequence[str], judged: Sequence[Mapping[str, Any]]) -> None:
    failed = [i for i, v in enumerate(judged) if judge_failed(texts[i], v)]
    if not failed:
        return
    share = len(failed) / len(texts)
    first = judged[failed[0]]["error"]
    if share > MAX_JUDGE_ERROR_FRACTION:
        raise JudgeFailure(f"{stage}: the judge failed on {len(failed)} of {len(texts)} replies ({share:.0%}, more "
                           f"than the {MAX_JUDGE_ERROR_FRACTION:.0%} allowed; first error: {first}); the stage is "
                           "not marked done: fix the judge and run the same command again, which judges only "
                           "those replies again")
    logging.warning("%s: the judge failed on %d of %d replies (%s); they count as non-matches", stage,
                    len(failed), len(texts), first)


def _stage_label(ctx: Any, directory: Path) -> str:
    try:
        return directory.relative_to(ctx.run.path).as_posix()
    except ValueError:
        return directory.name


@functools.cache
def fluency_rule() -> FluencyRule:
    """The shipped fluency rule (emojax/judge/artifacts/fluency_rule.json), read once."""
    return FluencyRule.load()


def fluency_in_chunks(ctx: Any, directory: Path, prompts: Sequence[Any], texts: Sequence[str], *,
                      job: str = "fluency") -> list[dict[str, Any]]:
    """Fluency measures and verdict {perplexity, distinct_1, distinct_2, repetition, fluent} of every reply.

    Perplexity is that of the unmodified model (ctx.model) given the reply's own prompt: one forward per
    chunk of `ctx.preset.batch_size` rows, every chunk at one shape. An empty reply has perplexity None and
    is not fluent."""
    rule = fluency_rule()
    batch = reply_batch(ctx.model.tokenizer, prompts, texts, date_string=ctx.settings.date_string,
                        pad_multiple=PAD_MULTIPLE)
    n = len(texts)
    size = min(ctx.preset.batch_size, n)
    spec = {"model": model_hash(ctx), "rule": rule.identity, "rows": size,
            "replies": hashlib.sha256(batch.tokens.tobytes() + batch.mask.tobytes()).hexdigest()}

    def compute(start: int, stop: int) -> list[dict[str, Any]]:
        rows = np.minimum(np.arange(start, start + size), n - 1)
        found = measures(batch_perplexities(ctx.model.params, ctx.model.config, batch, rows)[: stop - start],
                         texts[start:stop])
        return [{**as_json(m), "fluent": int(f)} for m, f in zip(found, rule.fluent(found))]

    chunked = ChunkedJob(directory, f"{job}-{digest(spec)}", n, size, spec)
    return chunked.run(compute, desc=f"{directory.name} {job}")


def item_record(item: Item, generation: Mapping[str, Any], verdict: Mapping[str, Any],
                meta: Mapping[str, Any], fluency: Mapping[str, Any]) -> dict[str, Any]:
    """A generated and judged record in the method.md §3.3 schema, with the reply's fluency: `judge`
    gains fluent and fluent_match (= match and fluent), `fluency` holds the measures."""
    if generation["key"] != item.key:
        raise ValueError(f"generation record {generation['key']!r} does not belong to item {item.key!r}")
    fluent = int(fluency["fluent"])
    input_len = int(generation["input_len"])
    return {
        "key": item.key, "skeleton_id": item.skeleton_id, "theme": item.record.theme,
        "valence": item.valence, "emotion": item.emotion, "scenario": item.record.scenario,
        "event": item.event, "gen_text": generation["gen_text"],
        "meta": {**meta, "input_len": input_len, "last_input_idx": input_len - 1,
                 "new_tokens": int(generation["new_tokens"]), "finished": bool(generation["finished"])},
        "judge": {**verdict, "fluent": fluent, "fluent_match": int(verdict["match"] == 1 and fluent == 1)},
        "fluency": {k: fluency[k] for k in MEASURES},
    }


def record_meta(ctx: Any, decoding: Decoding, **extra: Any) -> dict[str, Any]:
    """The `meta` block shared by a stage's records (model, dtype, decoding, date string, ...)."""
    return {"model": ctx.model.name, "model_hash": model_hash(ctx), "dtype": decoding.dtype,
            "decoding": decoding.to_json(), "date": ctx.settings.date_string, **extra}


def run_judged_generation(ctx: Any, directory: Path, items: Sequence[Item], prompts: Sequence[Any],
                          decoding: Decoding, *, fingerprint: Any, row_iv: RowIntervention | None = None,
                          meta: Mapping[str, Any] | None = None, job: str = "generate"
                          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate, judge, rate fluency and tabulate: (§3.3 records, accuracy tables) of `items`."""
    keys = [item.key for item in items]
    generations = generate_in_chunks(ctx, directory, keys, prompts, decoding, fingerprint=fingerprint,
                                     row_iv=row_iv, job=job)
    texts = [g["gen_text"] for g in generations]
    judged = judge_in_chunks(ctx, directory, texts, [item.emotion for item in items], job=f"{job}_judge")
    fluency = fluency_in_chunks(ctx, directory, prompts, texts, job=f"{job}_fluency")
    shared = record_meta(ctx, decoding, **dict(meta or {}))
    records = [item_record(item, g, v, shared, f) for item, g, v, f in zip(items, generations, judged, fluency)]
    return records, accuracy_tables(records)


def write_judged_outputs(directory: Path, records: Sequence[Mapping[str, Any]], tables: Mapping[str, Any],
                         title: str) -> None:
    """records.jsonl, accepted.jsonl (match 1), rejected.jsonl (match 0), accuracy.json, accuracy.md."""
    write_jsonl(directory / "records.jsonl", records)
    write_jsonl(directory / "accepted.jsonl", [r for r in records if r["judge"]["match"] == 1])
    write_jsonl(directory / "rejected.jsonl", [r for r in records if r["judge"]["match"] != 1])
    write_json(directory / "accuracy.json", tables)
    write_text(directory / "accuracy.md", accuracy_markdown(tables, title))
