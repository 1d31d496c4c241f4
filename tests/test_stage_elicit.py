"""S1 elicitation on a tiny random model: §3.3 records, accuracy tables, one shape per stage, resume."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from emojax.data import EMOTIONS, VALENCES, items
from emojax.evaluation.accuracy import accuracy_markdown, accuracy_tables, overall_fraction
from emojax.judge import verdicts
from emojax.judge.perplexity import perplexities
from emojax.method.prompts import emotion_messages, tokenize_prompts
from emojax.runs import read_jsonl
from emojax.stages import elicit, judged
from stage_fixtures import TINY_CONFIG, TINY_GEMMA_CONFIG, FakeJudge, make_context

RECORD_FIELDS = {"key", "skeleton_id", "theme", "valence", "emotion", "scenario", "event", "gen_text", "meta",
                 "judge", "fluency"}
JUDGE_FIELDS = {"match", "reason", "error", "fluent", "fluent_match"}


def _record(emotion: str, valence: str, match: int, error: str | None = None, fluent: int = 1) -> dict:
    return {"key": f"x__{valence}__{emotion}", "emotion": emotion, "valence": valence,
            "judge": {"match": match, "reason": "", "error": error, "fluent": fluent,
                      "fluent_match": int(match == 1 and fluent == 1)}}


def test_accuracy_tables_count_and_round() -> None:
    records = [_record("anger", "positive", 1), _record("anger", "positive", 0, "empty reply", fluent=0),
               _record("anger", "negative", 1, fluent=0), _record("fear", "neutral", 0)]
    tables = accuracy_tables(records)
    assert tables["overall"] == {"accuracy": 50.0, "matched": 2, "total": 4, "judge_errors": 1, "fluent": 2,
                                 "fluent_matched": 1, "fluent_accuracy": 25.0}
    assert tables["per_emotion"]["anger"] == {"accuracy": 66.67, "matched": 2, "total": 3, "judge_errors": 1,
                                              "fluent": 1, "fluent_matched": 1, "fluent_accuracy": 33.33}
    assert tables["per_emotion"]["sadness"] == {"accuracy": None, "matched": 0, "total": 0, "judge_errors": 0,
                                                "fluent": 0, "fluent_matched": 0, "fluent_accuracy": None}
    assert tables["per_valence"]["neutral"]["accuracy"] == 0.0
    assert tables["per_emotion_valence"]["anger"]["positive"]["accuracy"] == 50.0
    assert tables["per_emotion_valence"]["anger"]["negative"]["fluent_accuracy"] == 0.0
    assert list(tables["per_emotion"]) == list(EMOTIONS) and list(tables["per_valence"]) == list(VALENCES)
    assert overall_fraction(tables) == 0.5 and tables["overall"]["fluent_matched"] / tables["overall"]["total"] == 0.25
    text = accuracy_markdown(tables, "t")
    assert "| judged | 50.00 (2/4) | 66.67 (2/3) |" in text and "| fluent | 25.00 (1/4) | 33.33 (1/3) |" in text
    assert "Judge failures (counted as no match): 1" in text and "Fluent replies: 2/4" in text


def test_accuracy_tables_refuse_bad_records() -> None:
    with pytest.raises(ValueError, match="judge.match must be 0 or 1"):
        accuracy_tables([_record("anger", "positive", 2)])
    with pytest.raises(ValueError, match="unknown emotion"):
        accuracy_tables([_record("joy", "positive", 1)])
    inconsistent = _record("anger", "positive", 0)
    inconsistent["judge"]["fluent_match"] = 1
    with pytest.raises(ValueError, match="fluent_match=1 but match=0"):
        accuracy_tables([inconsistent])
    unrated = _record("anger", "positive", 1)
    del unrated["judge"]["fluent"]
    with pytest.raises(ValueError, match="judge.fluent"):
        accuracy_tables([unrated])


def test_decoding_rows_follow_the_method() -> None:
    assert judged.decoding_for("prompting", 100).generate_kwargs() == {
        "max_new_tokens": 100, "min_new_tokens": 0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    steering = judged.decoding_for("steering", 100)
    assert (steering.min_new_tokens, steering.repetition_penalty, steering.no_repeat_ngram_size) == (10, 1.05, 3)
    with pytest.raises(ValueError, match="unknown generation condition"):
        judged.decoding_for("sampling", 100)


def test_float16_conditions_decode_in_bfloat16_where_float16_overflows() -> None:
    # Gemma's residual stream leaves float16's range: its circuit and baseline rows would be inf.
    assert judged.decoding_for("circuit", 100, config=TINY_CONFIG).dtype == "float16"
    assert judged.decoding_for("baseline", 100, config=TINY_GEMMA_CONFIG).dtype == "bfloat16"
    assert judged.decoding_for("circuit", 100, config=TINY_GEMMA_CONFIG).dtype == "bfloat16"
    assert judged.decoding_for("steering", 100, config=TINY_GEMMA_CONFIG).dtype == "float32"


class Interrupt(Exception):
    pass


def test_elicit_writes_records_resumes_and_skips(tmp_path, monkeypatch) -> None:
    """One run killed after its first chunk, resumed, then skipped; every chunk has one shape."""
    judge = FakeJudge(reject=lambda text, target: target == "fear")
    ctx = make_context(tmp_path, judge=judge)
    shapes: list[tuple] = []
    real_generate = judged.generate

    def counting(model, prompts, **kwargs):
        if len(shapes) == 1 and kill["armed"]:
            raise Interrupt
        shapes.append((prompts[0].shape, kwargs["batch_size"]))
        return real_generate(model, prompts, **kwargs)

    kill = {"armed": True}
    monkeypatch.setattr(judged, "generate", counting)
    fluency_shapes: list[tuple] = []
    real_perplexities = judged.batch_perplexities

    def counting_perplexities(params, config, batch, rows):
        fluency_shapes.append((batch.tokens[rows].shape, batch.reply_width))
        return real_perplexities(params, config, batch, rows)

    monkeypatch.setattr(judged, "batch_perplexities", counting_perplexities)
    with pytest.raises(Interrupt):
        elicit.run(ctx, "train")
    assert len(shapes) == 1 and not ctx.run.is_done("elicit_train")
    kill["armed"] = False
    summary = elicit.run(ctx, "train")
    n_items = len(items(ctx.train))        # 36 items, chunks of 12: the resume computes chunks 1 and 2 only
    assert len(shapes) == 3 and len(set(shapes)) == 1 and shapes[0][1] == 12

    out = ctx.run.path / "elicit_train"
    records = read_jsonl(out / "records.jsonl")
    assert [r["key"] for r in records] == [i.key for i in items(ctx.train)]
    assert all(set(r) == RECORD_FIELDS and set(r["judge"]) == JUDGE_FIELDS for r in records)
    assert all(set(r["fluency"]) == {"perplexity", "distinct_1", "distinct_2", "repetition"} for r in records)
    assert all(r["judge"]["fluent_match"] == (r["judge"]["match"] and r["judge"]["fluent"]) for r in records)
    assert all(isinstance(r["fluency"]["perplexity"], float) for r in records if r["gen_text"])
    assert len(fluency_shapes) == 3 and len(set(fluency_shapes)) == 1      # one forward per chunk, one shape
    direct = perplexities(ctx.model, [emotion_messages(i) for i in items(ctx.train)[:3]],
                          [r["gen_text"] for r in records[:3]], batch_size=3)
    np.testing.assert_allclose([r["fluency"]["perplexity"] for r in records[:3]], direct, rtol=1e-4)
    prompts = tokenize_prompts(ctx.model.tokenizer, [emotion_messages(i) for i in items(ctx.train)])
    assert [r["meta"]["input_len"] for r in records] == prompts.lengths.tolist()
    assert all(r["meta"]["last_input_idx"] == r["meta"]["input_len"] - 1 for r in records)
    assert records[0]["meta"]["decoding"]["repetition_penalty"] == 1.0
    assert records[0]["meta"]["date"] == "15 Sep 2025"
    assert all(r["judge"]["match"] == (r["emotion"] != "fear") for r in records)
    assert len(read_jsonl(out / "accepted.jsonl")) == n_items - n_items // 6
    assert len(read_jsonl(out / "rejected.jsonl")) == n_items // 6
    tables = json.loads((out / "accuracy.json").read_text())
    assert tables["per_emotion"]["fear"]["accuracy"] == 0.0 and tables["overall"]["accuracy"] == 83.33
    assert summary["accuracy"] == tables["overall"]

    # A chunk padded to the stage's shape gives what a plain generate of its prompts gives.
    direct = real_generate(ctx.model, [emotion_messages(i) for i in items(ctx.train)[:2]],
                           max_new_tokens=ctx.preset.max_new_tokens)
    assert [r["gen_text"] for r in records[:2]] == direct.texts

    judge_calls = len(judge.calls)
    assert elicit.run(ctx, "train") == summary      # finished with the same inputs: skipped
    assert len(shapes) == 3 and len(judge.calls) == judge_calls

    lenient = FakeJudge()                          # another judge re-judges the same replies
    lenient.identity = "lenient"
    rejudged = elicit.run(dataclasses.replace(ctx, judge=lenient), "train")
    assert len(shapes) == 3 and lenient.calls == [n_items] and len(fluency_shapes) == 3  # replies and fluency reused
    assert rejudged["accuracy"]["accuracy"] == 100.0
    assert [r["gen_text"] for r in read_jsonl(out / "records.jsonl")] == [r["gen_text"] for r in records]


def test_load_records_requires_a_finished_stage(tmp_path) -> None:
    ctx = make_context(tmp_path)
    with pytest.raises(Exception, match="has not finished"):
        elicit.load_records(ctx, "train")


def test_verdicts_validate_judge_output() -> None:
    class Result:
        match = np.array([1, 0])
        errors = [None, "unparsable JSON"]
    assert verdicts.verdicts(Result(), 2) == [{"match": 1, "reason": "", "error": None},
                                          {"match": 0, "reason": "", "error": "unparsable JSON"}]
    with pytest.raises(ValueError, match="for 3 texts"):
        verdicts.verdicts(Result(), 3)
