"""Checking a judge against careful reading on a run's replies: the stratified draw, its weighted figures
against a census, and every input error naming its file and line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emojax.evaluation.reading import (draw_sample, load_stage_records, read_key, read_readings, score_sample,
                                      stratified_rate, weighted_agreement)
from emojax.runs import InputError

REPO = Path(__file__).resolve().parents[1]


def _record(i: int, emotion: str, fluent_match: int) -> dict:
    return {"key": f"s{i:02d}__positive__{emotion}", "emotion": emotion, "scenario": f"scenario {i}",
            "event": f"event {i}", "gen_text": f"reply {i} {emotion}",
            "judge": {"match": fluent_match, "fluent": 1, "fluent_match": fluent_match}}


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for stage, positives in (("steer_test", 3), ("modulate_test", 6)):
        (run / stage).mkdir(parents=True)
        rows = [_record(i, emotion, int(i < positives)) for emotion in ("anger", "sadness") for i in range(12)]
        (run / stage / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def test_the_draw_is_stratified_blind_and_seeded(tmp_path: Path) -> None:
    records = load_stage_records(_run(tmp_path), ["steer_test", "modulate_test"])
    blind, key = draw_sample(records, 4, seed=3)
    assert [set(r) for r in blind] == [{"id", "target", "scenario", "event", "text"}] * len(blind)
    strata = {(k["stage"], k["emotion"], k["judge"]["fluent_match"]) for k in key}
    assert len(strata) == 8 and len(key) == 8 * 4 - 2 * 1  # steer_test's 3 judged matches per emotion, all drawn
    assert {k["stratum_population"] for k in key if k["stage"] == "steer_test"} == {3, 9}
    assert len({r["id"] for r in blind}) == len(blind)
    assert draw_sample(records, 4, seed=3) == (blind, key)
    assert draw_sample(records, 4, seed=4)[1] != key


def test_a_census_read_as_judged_gives_the_judges_own_figures(tmp_path: Path) -> None:
    records = load_stage_records(_run(tmp_path), ["steer_test", "modulate_test"])
    _, key = draw_sample(records, 1000, seed=0)
    readings = {k["id"]: dict(k["judge"]) for k in key}
    figures = score_sample(key, readings, records)
    for stage, positives in (("steer_test", 3), ("modulate_test", 6)):
        fm = figures[stage]["fluent_match"]
        assert fm["agreement"] == 1.0 and fm["kappa"] == 1.0
        assert fm["read_rate"] == fm["judged_rate"] == round(positives / 12, 4)
        assert fm["read_interval"] == [fm["read_rate"]] * 2 and fm["judged_inside_interval"]
        assert fm["agreement_interval"] == [1.0, 1.0]


def test_a_sample_weighs_each_stratum_by_its_population() -> None:
    # a: 0 of 2 read among 4 replies (smoothed 1/4); b: 1 of 1 among 3 (smoothed 2/3); c: 2 of 2, read whole
    read = np.array([0, 0, 1, 1, 1])
    strata, population = np.array(["a", "a", "b", "c", "c"]), np.array([4, 4, 3, 2, 2])
    estimate, low, high = stratified_rate(read, strata, population)
    assert estimate == pytest.approx((4 * 0 + 3 * 1 + 2 * 1) / 9)
    variance = 4 ** 2 * (1 - 2 / 4) * (1 / 4) * (3 / 4) / 2 + 3 ** 2 * (1 - 1 / 3) * (2 / 3) * (1 / 3) / 1
    half = 1.959963984540054 * np.sqrt(variance) / 9
    assert (low, high) == pytest.approx((estimate - half, estimate + half))
    with pytest.raises(ValueError, match="stratum 'a' has 2 rows read but a population of 1"):
        stratified_rate(read, strata, np.array([1, 1, 3, 2, 2]))


def test_weighted_agreement_and_an_undefined_kappa() -> None:
    truth, pred = np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])
    agreement, kappa = weighted_agreement(truth, pred, np.array([3.0, 1.0, 1.0, 1.0]))
    assert agreement == pytest.approx(5 / 6)
    p_t, p_p = 4 / 6, 3 / 6
    chance = p_t * p_p + (1 - p_t) * (1 - p_p)
    assert kappa == pytest.approx((5 / 6 - chance) / (1 - chance))
    # every row judged and read a match: kappa is undefined, not 0 or 0.5 by rounding
    agreement, kappa = weighted_agreement(np.ones(3, int), np.ones(3, int), np.array([10 / 3, 3 / 2, 1.0]))
    assert agreement == pytest.approx(1.0) and kappa is None


def test_readings_that_do_not_cover_the_sample_name_the_problem(tmp_path: Path) -> None:
    records = load_stage_records(_run(tmp_path), ["steer_test"])
    _, key = draw_sample(records, 2, seed=0)
    path = tmp_path / "readings.jsonl"
    rows = [{"id": k["id"], "match": 1, "fluent": 1} for k in key]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]), encoding="utf-8")
    with pytest.raises(InputError, match=r"1 sampled replies are not read yet, e\.g\. " + key[0]["id"]):
        read_readings(path, key)
    rows[1]["fluent"] = "yes"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(InputError, match=r"readings\.jsonl line 2: field 'fluent' must be 0 or 1"):
        read_readings(path, key)
    path.write_text(json.dumps({"id": "R9999", "match": 1, "fluent": 1}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1: id 'R9999' is not in the sample's key"):
        read_readings(path, key)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1: not valid JSON"):
        read_readings(path, key)


def test_bad_records_name_their_line_and_a_missing_stage_lists_the_present_ones(tmp_path: Path) -> None:
    run = _run(tmp_path)
    with pytest.raises(InputError, match="records.jsonl: not found; stages with records in .*: modulate_test, steer_test"):
        load_stage_records(run, ["elicit_test"])
    path = run / "steer_test" / "records.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    broken = json.loads(lines[4])
    del broken["gen_text"]
    lines[4] = json.dumps(broken)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="records.jsonl line 5: field 'gen_text' is missing"):
        load_stage_records(run, ["steer_test"])


def test_the_launcher_draws_scores_and_never_replaces_a_key(tmp_path: Path) -> None:
    run, out = _run(tmp_path), tmp_path / "reading"
    command = [sys.executable, "-m", "experiments.reading_sample", f"--run={run}", f"--out={out}",
               "--stages=steer_test", "--per_stratum=3"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    key = [json.loads(line) for line in (out / "key.jsonl").read_text(encoding="utf-8").splitlines()]
    (out / "readings.jsonl").write_text("".join(json.dumps({"id": k["id"], "match": k["judge"]["match"], "fluent": 1})
                                                + "\n" for k in key), encoding="utf-8")
    scored = subprocess.run(command + ["--score"], cwd=REPO, check=True, capture_output=True, text=True)
    assert "| steer_test | 24 (12) | 100.0%" in scored.stdout
    assert json.loads((out / "agreement.json").read_text())["steer_test"]["fluent_match"]["kappa"] == 1.0
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "key.jsonl exists" in again.stderr


def _quick_run_records() -> tuple[dict[str, list[dict]], dict[tuple[str, str], dict]]:
    """The SmolLM2 quick run's 432 test replies as stage records (the run's verdicts), and their full reading."""
    path = REPO / "experiments" / "judge_training" / "labels" / "smollm2_quick_test_replies.jsonl"
    stage_of = {"prompting": "elicit_test", "steering": "steer_test", "circuit": "modulate_test"}
    records: dict[str, list[dict]] = {stage: [] for stage in stage_of.values()}
    reading = {}
    for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
        verdict = row["run_verdict"]
        judge = {"match": verdict["match"], "fluent": verdict["fluent"], "fluent_match": verdict["match"] * verdict["fluent"]}
        stage = stage_of[row["condition"]]
        records[stage].append({"key": row["key"], "emotion": row["emotion"], "scenario": row["scenario"],
                               "event": row["event"], "gen_text": row["text"], "judge": judge})
        label = row["label"]
        reading[(stage, row["key"])] = {"match": label["match"], "fluent": label["fluent"],
                                        "fluent_match": label["match"] * label["fluent"]}
    return records, reading


def test_on_a_fully_read_run_samples_estimate_the_full_reading() -> None:
    records, reading = _quick_run_records()
    read = lambda key: {k["id"]: reading[(k["stage"], k["key"])] for k in key}  # noqa: E731
    _, census = draw_sample(records, 1000, seed=0)
    full = score_sample(census, read(census), records)
    # docs/judge.md: the quick run's full reading
    assert [(full[s]["fluent_match"]["agreement"], full[s]["fluent_match"]["read_rate"])
            for s in ("elicit_test", "steer_test", "modulate_test")] == [(0.9792, 0.0417), (0.9444, 0.2431),
                                                                          (0.8681, 0.4236)]
    agreement, rate, covered = [], [], 0
    for seed in range(40):
        _, key = draw_sample(records, 8, seed)
        fm = score_sample(key, read(key), records)["modulate_test"]["fluent_match"]
        agreement.append(fm["agreement"])
        rate.append(fm["read_rate"])
        covered += fm["read_interval"][0] <= 0.4236 <= fm["read_interval"][1]
    assert abs(np.mean(agreement) - 0.8681) < 0.015 and abs(np.mean(rate) - 0.4236) < 0.015
    assert covered >= 36


def test_an_edited_key_or_a_changed_run_is_refused(tmp_path: Path) -> None:
    run, out = _run(tmp_path), tmp_path / "reading"
    records = load_stage_records(run, ["steer_test"])
    _, key = draw_sample(records, 2, seed=0)
    path = out / "key.jsonl"
    out.mkdir()
    edited = [dict(row) for row in key]
    edited[0]["stratum_sampled"] = 5
    path.write_text("".join(json.dumps(r) + "\n" for r in edited), encoding="utf-8")
    with pytest.raises(InputError, match="holds 2 rows, but its rows say 5 sampled"):
        read_key(path)
    del edited[0]["stage"]
    path.write_text("".join(json.dumps(r) + "\n" for r in edited), encoding="utf-8")
    with pytest.raises(InputError, match="key.jsonl line 1: field 'stage' is missing"):
        read_key(path)
    # the stage is re-judged after the draw: one more judged match
    path.write_text("".join(json.dumps(r) + "\n" for r in key), encoding="utf-8")
    (out / "readings.jsonl").write_text("".join(json.dumps({"id": k["id"], "match": 1, "fluent": 1}) + "\n"
                                                for k in key), encoding="utf-8")
    stage_file = run / "steer_test" / "records.jsonl"
    rows = [json.loads(line) for line in stage_file.read_text(encoding="utf-8").splitlines()]
    rows[5]["judge"] = {"match": 1, "fluent": 1, "fluent_match": 1}
    stage_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    scored = subprocess.run([sys.executable, "-m", "experiments.reading_sample", f"--run={run}", f"--out={out}",
                             "--score"], cwd=REPO, capture_output=True, text=True)
    assert scored.returncode == 2 and "the stage changed since the draw" in scored.stderr
