"""Nothing wrong is marked done: start-up checks of `open_context` (settings, prompt lengths,
tokenizer files, judges), non-finite values kept out of manifests, fingerprints and artefacts, judge
failures that fail a stage and are retried alone, and stage outputs covered by done.json."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from absl import flags as absl_flags

from emojax.data import load_dataset
from emojax.launch.launcher import open_context
from emojax.method.prompts import CHARS_PER_POSITION
from emojax.runs import InputError, RunDir, check_array_file, check_circuit, write_npz
from emojax.runs.stage_record import finished_summary, mark_finished
from emojax.stages import directions_stage, elicit, steer
from emojax.stages.context import Settings
from emojax.judge.verdicts import MAX_JUDGE_ERROR_FRACTION
from emojax.stages.judged import JudgeFailure
from stage_fixtures import TINY_CONFIG, TINY_PRESET, FakeJudge, make_context, split, tiny_loaded_model

N_EMOTIONS = 6


@pytest.fixture(scope="module")
def model():
    return tiny_loaded_model()


def _open(tmp_path: Path, model, **kwargs):
    return open_context(out=str(tmp_path / "run"), model=model, preset=TINY_PRESET, judge=FakeJudge(), **kwargs)


@pytest.mark.parametrize("settings, says", [
    (Settings(steer_alpha=math.nan), r"--steer_alpha=nan: expected a finite number > 0"),
    (Settings(steer_alpha=-math.inf), r"--steer_alpha=-inf: expected a finite number > 0"),
    (Settings(min_complete_groups=-3), r"--min_complete_groups=-3: expected an integer >= 1"),
    (Settings(modulation_scale=math.nan), r"--modulation_scale=nan: expected a finite number > 0"),
    (Settings(seed=2 ** 32), r"--seed=4294967296: expected an integer >= 0 and < 4294967296"),
])
def test_bad_settings_are_refused_before_the_run_directory_exists(tmp_path, model, settings, says):
    with pytest.raises(InputError, match=says):
        _open(tmp_path, model, settings=settings)
    assert not (tmp_path / "run").exists()


def _sev_file(path: Path, scenario: str) -> str:
    """The first two bundled train records, the second with `scenario`."""
    records = [r.to_json() for r in load_dataset("bundled:train")[:2]]
    records[1]["scenario"] = scenario
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_a_prompt_longer_than_the_maximum_position_names_its_record(tmp_path, model):
    long = " ".join(["I walked past the station"] * 300)  # ~7,500 characters: over 1,024 tokens
    train = _sev_file(tmp_path / "long.jsonl", long)
    skeleton = load_dataset("bundled:train")[1].skeleton_id
    with pytest.raises(InputError, match=rf"long.jsonl: record {skeleton} \(positive, anger\): a prompt of [\d,]+ "
                                         rf"tokens plus 4 new tokens exceeds the model's maximum position 1,024"):
        _open(tmp_path, model, train=train)
    assert not (tmp_path / "run").exists()


def test_a_huge_scenario_is_refused_without_tokenising_it(tmp_path, model, monkeypatch):
    huge = "x" * (CHARS_PER_POSITION * TINY_CONFIG.max_position + 1)
    train = _sev_file(tmp_path / "huge.jsonl", huge)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the tokenizer was called")

    monkeypatch.setattr(type(model.tokenizer), "__call__", no_tokenizing)
    with pytest.raises(InputError, match=r"huge.jsonl: record .*: its scenario and event are [\d,]+ characters, far "
                                         r"more than the model's 1,024 positions hold"):
        _open(tmp_path, model, train=train)
    assert not (tmp_path / "run").exists()


def test_an_hf_directory_without_tokenizer_files_is_refused_before_loading(tmp_path):
    checkpoint = tmp_path / "no_tokenizer"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    with pytest.raises(InputError, match=rf"--model={checkpoint}: {checkpoint} has no tokenizer files "
                                         r"\(tokenizer.json, tokenizer_config.json"):
        open_context(out=str(tmp_path / "run"), model=str(checkpoint), preset=TINY_PRESET, judge=FakeJudge())
    assert not (tmp_path / "run").exists()


def test_a_model_without_a_tokenizer_is_refused(tmp_path, model):
    with pytest.raises(InputError, match=r"the checkpoint has no tokenizer; emojax needs"):
        _open(tmp_path, dataclasses.replace(model, tokenizer=None))
    assert not (tmp_path / "run").exists()


def test_a_judge_whose_check_fails_stops_the_start(tmp_path, model):
    class Unreachable(FakeJudge):
        def check(self) -> None:
            raise ValueError("$JUDGE_KEY is not set")

    with pytest.raises(InputError, match=r"judge: \$JUDGE_KEY is not set"):
        open_context(out=str(tmp_path / "run"), model=model, preset=TINY_PRESET, judge=Unreachable())
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Run identity and fingerprints

def _launcher_flags(argv: list[str]) -> absl_flags.FlagValues:
    values = absl_flags.FlagValues()
    absl_flags.DEFINE_float("steer_alpha", None, "", flag_values=values)
    absl_flags.DEFINE_float("modulation_scale", 1.0, "", flag_values=values)
    absl_flags.DEFINE_list("alphas", None, "", flag_values=values)
    absl_flags.DEFINE_integer("sweep_per_theme", None, "", flag_values=values)
    values(["launcher", *argv])
    return values


@pytest.mark.parametrize("argv", [
    ["--modulation_scale=0.1", "--alphas=0.3,1e-7,2"],  # a float flag and a list flag; optional ones unset
    ["--steer_alpha=1.3333333333333333", "--sweep_per_theme=2"],
    [],
])
def test_every_accepted_flag_value_resumes_with_the_same_command(tmp_path, argv):
    first = RunDir.open(tmp_path / "run", flags=_launcher_flags(argv), log_to_file=False)
    again = RunDir.open(tmp_path / "run", flags=_launcher_flags(argv), log_to_file=False)
    assert [i["resumed"] for i in again.invocations] == [False, True]
    assert first.manifest["identity"] == again.manifest["identity"]


def test_non_finite_flags_never_reach_a_manifest(tmp_path):
    with pytest.raises(InputError, match=r"--steer_alpha=NaN: expected a finite number; nan and inf cannot be "
                                         r"recorded"):
        RunDir.open(tmp_path / "run", flags=_launcher_flags(["--steer_alpha=nan"]), log_to_file=False)
    with pytest.raises(InputError, match=r"--alphas=\[1.0, Infinity\] \(at 1\): expected a finite number"):
        RunDir.open(tmp_path / "run", flags={"alphas": [1.0, math.inf]}, log_to_file=False)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_stage_fingerprint_with_floats_lists_and_none_matches_itself(tmp_path):
    ctx = make_context(tmp_path)
    stamp = {"alphas": [0.1, 1e-7, 2.5], "alpha": None, "scale": 1 / 3}
    mark_finished(ctx.run, "sweep", stamp, {"best": 0.1})
    assert finished_summary(ctx.run, "sweep", dict(stamp)) == {"best": 0.1}
    with pytest.raises(InputError, match=r"stage sweep fingerprint alphas.1 is not a finite number"):
        finished_summary(ctx.run, "sweep", {**stamp, "alphas": [0.1, math.nan]})


# ---------------------------------------------------------------------------------------------
# Arrays and circuits read back from a run directory

def _directions(nan_at: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    c = TINY_CONFIG
    shapes = {"dirs_attn": (6, c.n_layers, c.d_model), "dirs_mlp": (6, c.n_layers, c.d_model),
              "delta_mlp": (6, c.n_layers, c.d_ff), "delta_attn": (6, c.n_layers, c.q_dim),
              "sigma_attn": (c.n_layers,), "sigma_mlp": (c.n_layers,), "v_ref": (6, c.d_model)}
    rng = np.random.default_rng(0)
    arrays = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    if nan_at is not None:
        arrays["dirs_mlp"][nan_at] = np.nan
    return arrays


def test_a_nan_row_in_directions_fails_steering_before_it_generates(tmp_path):
    ctx = make_context(tmp_path)
    path = ctx.run.stage(directions_stage.STAGE) / "directions.npz"
    write_npz(path, _directions(nan_at=(2, 1)), meta={"model_hash": ctx.model.source_hash, "rule": "all"})
    ctx.run.mark_done(directions_stage.STAGE)
    with pytest.raises(InputError, match=r"directions.npz: array 'dirs_mlp' holds 32 non-finite values \(nan or inf; "
                                         r"the first at index \(2, 1, 0\)\)"):
        steer.run(ctx)
    assert not ctx.run.is_done(steer.STAGE) and not (ctx.run.path / steer.STAGE).exists()


def test_check_array_file_refuses_inf(tmp_path):
    arrays = {"sigma": np.array([1.0, np.inf], np.float32)}
    write_npz(tmp_path / "s.npz", arrays, meta={"model_hash": "h"})
    with pytest.raises(InputError, match=r"s.npz: array 'sigma' holds 1 non-finite values"):
        check_array_file(tmp_path / "s.npz", {"sigma": (2,)}, "h")


def test_nan_is_accepted_only_where_it_marks_entries_not_computed(tmp_path):
    write_npz(tmp_path / "c.npz", {"scores": np.array([np.nan, 1.0], np.float32)}, meta={"model_hash": "h"})
    loaded = check_array_file(tmp_path / "c.npz", {"scores": (2,)}, "h", nan_means_not_computed=("scores",))
    assert np.isnan(loaded["scores"][0]) and loaded["scores"][1] == 1.0
    with pytest.raises(InputError, match="non-finite"):
        check_array_file(tmp_path / "c.npz", {"scores": (2,)}, "h")
    write_npz(tmp_path / "i.npz", {"scores": np.array([np.nan, np.inf], np.float32)}, meta={"model_hash": "h"})
    with pytest.raises(InputError, match=r"holds 1 non-finite values"):
        check_array_file(tmp_path / "i.npz", {"scores": (2,)}, "h", nan_means_not_computed=("scores",))


def test_a_circuit_with_a_nan_score_is_refused():
    record = {"emotion": "anger", "layers": [{"layer": 0, "mlp": {"neurons": [1], "scores": [math.nan]},
                                              "attention": {"heads": [0]}}]}
    with pytest.raises(InputError, match=r"anger.json: layers.0.mlp.scores.0 is not a finite number"):
        check_circuit(record, TINY_CONFIG, source="anger.json")


# ---------------------------------------------------------------------------------------------
# Judge failures and stage outputs

class FlakyJudge(FakeJudge):
    """Fails (match 0 with an error) on row i of a call when `failing(i, target)`, while `broken`."""

    def __init__(self, failing) -> None:
        super().__init__()
        self.failing, self.broken = failing, True

    def __call__(self, texts, targets):
        result = super().__call__(texts, targets)
        errors = ["API failure: HTTP 401" if self.broken and self.failing(i, e) else None
                  for i, e in enumerate(targets)]
        result.match = np.where([e is None for e in errors], result.match, 0)
        result.errors = errors
        return result


def test_judge_failures_fail_the_stage_and_only_those_rows_are_judged_again(tmp_path):
    judge = FlakyJudge(lambda row, target: target in ("anger", "fear"))
    ctx = make_context(tmp_path, judge=judge, train=split(2))
    n_items, n_failing = 2 * 3 * N_EMOTIONS, 2 * 3 * 2
    with pytest.raises(JudgeFailure, match=rf"elicit_train: the judge failed on {n_failing} of {n_items} replies "
                                           rf"\(33%, more than the {MAX_JUDGE_ERROR_FRACTION:.0%} allowed; first "
                                           r"error: API failure: HTTP 401\); the stage is not marked done"):
        elicit.run(ctx, "train")
    stage = ctx.run.path / "elicit_train"
    assert not ctx.run.is_done("elicit_train") and not (stage / "records.jsonl").exists()
    judge.broken = False
    judge.calls.clear()
    summary = elicit.run(ctx, "train")
    assert judge.calls == [n_failing]  # only the failed rows, once
    assert ctx.run.is_done("elicit_train") and summary["accuracy"]["judge_errors"] == 0
    judge.calls.clear()
    elicit.run(ctx, "train")
    assert judge.calls == []


def test_a_few_judge_failures_are_counted_as_non_matches(tmp_path):
    judge = FlakyJudge(lambda row, target: row == 0)  # 1 of 36 replies: under the allowed fraction
    ctx = make_context(tmp_path, judge=judge, train=split(2))
    summary = elicit.run(ctx, "train")
    assert 1 / 36 <= MAX_JUDGE_ERROR_FRACTION
    assert ctx.run.is_done("elicit_train") and summary["accuracy"]["judge_errors"] == 1


def test_a_changed_output_of_a_finished_stage_is_recomputed(tmp_path, caplog):
    judge = FakeJudge(reject=lambda text, target: target == "fear")
    ctx = make_context(tmp_path, judge=judge, train=split(2))
    elicit.run(ctx, "train")
    accepted = ctx.run.path / "elicit_train" / "accepted.jsonl"
    original = accepted.read_bytes()
    accepted.write_bytes(original[: len(original) // 2])
    calls = len(judge.calls)
    with caplog.at_level("WARNING"):
        elicit.run(ctx, "train")
    assert accepted.read_bytes() == original
    assert len(judge.calls) == calls  # the judge chunks were reused
    assert any("accepted.jsonl changed since the stage finished; computing it again" in r.getMessage()
               for r in caplog.records)


def test_replies_from_nan_logits_fail_the_stage_instead_of_being_judged(tmp_path, model):
    broken = dataclasses.replace(model, params={**model.params, "embed": model.params["embed"] * np.nan})
    judge = FakeJudge()
    ctx = make_context(tmp_path, model=broken, judge=judge, train=split(1))
    with pytest.raises(InputError, match=r"elicit_train: the logits became nan or inf while generating 12 of 12 "
                                         r"replies \(first: .*\), which would be empty; check the intervention's "
                                         r"values and the dtype \(float32\)"):
        elicit.run(ctx, "train")
    assert judge.calls == [] and not ctx.run.is_done("elicit_train")
