"""Cross-model validation's own figures: the coverage ceiling (what no head fitted on some sources can reach),
weighted figures of a stratified sample, and the careful reading of Llama's steered replies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.judge_training.cross_validation import PROTOCOLS, binary_figures, scenario_folds
from experiments.judge_training.data import (EXTRA_READINGS, LLAMA_READING_FILE, LabelledText, load_extra_readings,
                                             load_llama_reading)
from experiments.judge_training.offline_fit import balanced_scales
from experiments.judge_training.reader_cache import candidate_layers
from experiments.judge_training.llama_reading import reading_figures, weighted_figures
from experiments.judge_training.transfer import extended_folds, layer_columns, nested_choice, parse_design
from experiments.judge_training.transfer_bounds import coverage_ceiling, coverage_figures, reply_subsets


TRANSFER_FIGURES = Path(__file__).resolve().parents[1] / "experiments" / "judge_training" / "transfer_figures.json"


def _row(target: str, match: int, label: str, scenario: str, source: str) -> LabelledText:
    return LabelledText(f"{source} {target} {match} {scenario}", target, match, label, scenario, source)


def _rows() -> tuple[list[LabelledText], np.ndarray]:
    rows = [_row("anger", 1, "anger", "a", "rated"), _row("sadness", 0, "none", "a", "rated"),
            # fear is carried by a rated reply of the test fold only: no fit of that fold sees it
            _row("fear", 1, "fear", "b", "rated"),
            _row("anger", 1, "anger", "b", "unprompted"), _row("fear", 1, "fear", "b", "unprompted"),
            _row("fear", 0, "none", "b", "unprompted"), _row("anger", 0, "none", "b", "unprompted")]
    return rows, np.array([1, 1, 0, 0, 0, 0, 0])


def test_a_target_no_training_text_carries_is_never_a_match() -> None:
    rows, folds = _rows()
    tested = np.array([r.source == "unprompted" for r in rows])
    ceiling = coverage_ceiling(rows, folds, {"rated"}, tested)
    assert ceiling["unseen_targets"] == ["fear"]
    assert ceiling["reference_matches_lost"] == 1
    # anger judged as its reference; fear never a match: right on the fear non-match, wrong on the fear match
    assert ceiling["n"] == 4 and ceiling["agreement"] == 0.75
    assert ceiling["predicted_positives"] == 1 and ceiling["both_positive"] == 1


def test_a_target_the_training_folds_carry_costs_nothing() -> None:
    rows, folds = _rows()
    tested = np.array([r.source == "unprompted" for r in rows])
    every_fold = np.zeros(len(rows), int)  # one fold: every fit sees no text, so nothing is ever seen
    assert coverage_ceiling(rows, every_fold, {"rated"}, tested)["unseen_targets"] == ["anger", "fear"]
    with_fear = rows + [_row("fear", 1, "fear", "c", "rated")]
    folds = np.append(folds, 1)
    tested = np.append(tested, False)
    ceiling = coverage_ceiling(with_fear, folds, {"rated"}, tested)
    assert ceiling["unseen_targets"] == [] and ceiling["agreement"] == 1.0 and ceiling["kappa"] == 1.0


def test_a_class_is_carried_by_a_training_label_not_by_a_target() -> None:
    rows, folds = _rows()
    tested = np.array([r.source == "unprompted" for r in rows])
    # a fear-target reply read as plain carries no fear; an anger-target reply read as fearful does
    plain_fear = rows + [_row("fear", 0, "none", "c", "rated")]
    assert coverage_ceiling(plain_fear, np.append(folds, 1), {"rated"}, np.append(tested, False))["unseen_targets"] == ["fear"]
    fearful = rows + [_row("anger", 0, "fear", "c", "rated")]
    assert coverage_ceiling(fearful, np.append(folds, 1), {"rated"}, np.append(tested, False))["unseen_targets"] == []


def test_coverage_figures_cover_what_each_protocol_tests() -> None:
    rows, folds = _rows()
    figures = coverage_figures(rows, folds)
    assert set(figures["no_llama"]) == {"llama_steered"}  # the subsets holding Llama replies
    assert figures["no_llama"]["llama_steered"]["unseen_targets"] == ["fear"]
    assert set(figures["no_smollm2"]) == {"smollm2_all"}
    assert figures["all"]["llama_steered"]["n"] == 4
    assert set(reply_subsets(rows)) >= {"llama_prompted", "llama_steered", "smollm2_all", "gemma_circuit"}


def test_weighted_figures_reduce_to_plain_ones_at_equal_weight() -> None:
    truth, pred = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    plain = binary_figures(truth, pred)
    weighted = weighted_figures(truth, pred, np.ones(5))
    assert weighted["agreement"] == plain["agreement"] and weighted["kappa"] == plain["kappa"]
    # a stratum of weight 3 counts as three rows
    tripled = weighted_figures(truth, pred, np.array([3.0, 1, 1, 1, 1]))
    assert tripled == {**weighted_figures(np.array([1, 1, 1, 1, 0, 0, 1]), np.array([1, 1, 1, 0, 0, 1, 1]),
                                          np.ones(7)), "n": 5}


def test_the_llama_reading_gives_its_documented_figures(shared_dir: Path) -> None:
    sample, hashes = load_llama_reading(shared_dir / "data" / "official")
    assert len(sample.texts) == 114 and len(hashes) == 1
    assert np.isclose(sample.weight.sum(), 1440)  # the strata cover every official steered reply
    figures = reading_figures(sample)
    assert figures["second_vs_first"]["agreement"] == pytest.approx(0.986, abs=5e-4)
    assert figures["second_vs_first"]["kappa"] == pytest.approx(0.96, abs=5e-3)
    assert figures["gpt_vs_first"]["agreement"] == pytest.approx(0.866, abs=5e-4)
    assert figures["gpt_vs_first"]["kappa"] == pytest.approx(0.50, abs=5e-3)
    assert figures["first_on_gpt_matches"] == pytest.approx(0.854, abs=5e-4)  # weighted: 60 of the 72 read
    assert figures["first_on_gpt_non_matches"] == pytest.approx(0.008, abs=5e-4)  # 1 of the 42 read


def test_a_reading_that_contradicts_the_official_verdict_names_its_line(shared_dir: Path, tmp_path: Path) -> None:
    lines = LLAMA_READING_FILE.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])
    record["gpt_match"] = 1 - record["gpt_match"]
    lines[2] = json.dumps(record)
    bad = tmp_path / "reading.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"reading\.jsonl line 3: gpt_match"):
        load_llama_reading(shared_dir / "data" / "official", bad)


def test_the_threshold_judge_matches_only_a_top_target_above_its_threshold() -> None:
    from experiments.judge_training.zero_shot import threshold_matches

    calibrated = np.array([[3.0, 1, 0, 0, 0, 0],    # anger on top at 3
                           [3.0, 1, 0, 0, 0, 0],    # the same text judged against sadness: not on top
                           [0.5, 0, 0, 0, 0, 0],    # anger on top, under the threshold
                           [3.0, 1, 0, 0, 0, 0]])   # a neutral sentence (no target) never matches
    targets = np.array([0, 1, 0, -1])
    assert threshold_matches(calibrated, targets, 1.0).tolist() == [1, 0, 0, 0]
    assert threshold_matches(calibrated, targets, 0.0).tolist() == [1, 0, 1, 0]


def test_balanced_scales_weigh_every_model_as_the_most_numerous() -> None:
    official = [_row("anger", 1, "anger", "a", "unprompted")] * 3 + [_row("anger", 1, "anger", "a", "prompted")]
    rated, gemma = [_row("anger", 1, "anger", "a", "rated")] * 2, [_row("anger", 1, "anger", "a", "gemma")]
    neutral = [_row("", 0, "none", "a", "neutral")] * 9  # sentences are not a model's replies
    llama = {"prompted": 1.0, "unprompted": 1.0}
    assert balanced_scales(official + rated + gemma + neutral) == {**llama, "rated": 2.0, "gemma": 4.0}
    assert balanced_scales(rated + gemma) == {"rated": 1.0, "gemma": 2.0}  # no Llama: SmolLM2's count rules
    assert balanced_scales(official[:1] + rated * 3) == {"prompted": 6.0, "unprompted": 6.0, "rated": 1.0}
    assert balanced_scales(neutral) == {}


def _design(llama: float, smollm2: float, gemma: float) -> dict:
    return {"no_llama": {"llama_steered": {"match": {"kappa": llama}}},
            "no_smollm2": {"smollm2_all": {"fluent_match": {"kappa": smollm2}}},
            "no_gemma": {"gemma_all": {"fluent_match": {"kappa": gemma}}}, "all": {}}


def test_a_protocol_design_is_chosen_by_the_other_protocols_alone() -> None:
    # "a" wins on Llama's replies by far, "b" on both small models' by a little
    designs = {"a": _design(0.9, 0.5, 0.5), "b": _design(0.1, 0.6, 0.6)}
    chosen = nested_choice(designs)
    assert chosen["no_llama"]["design"] == "b" and chosen["no_llama"]["figures"] == {"kappa": 0.1}
    assert chosen["no_llama"]["chosen_by"] == ["no_smollm2", "no_gemma"]
    assert chosen["no_smollm2"]["design"] == "a" and chosen["no_smollm2"]["score"] == pytest.approx(0.7)
    assert chosen["no_gemma"]["design"] == "a"
    assert set(chosen) == {"no_llama", "no_smollm2", "no_gemma"}


def test_a_protocol_without_its_figure_neither_chooses_nor_is_reported() -> None:
    designs = {"a": _design(0.9, 0.5, 0.5), "b": _design(0.1, 0.6, 0.6)}
    for figures in designs.values():
        del figures["no_gemma"]["gemma_all"]  # as in a run with --nogemma_replies
    chosen = nested_choice(designs)
    assert set(chosen) == {"no_llama", "no_smollm2"}
    assert chosen["no_llama"]["chosen_by"] == ["no_smollm2"] and chosen["no_llama"]["design"] == "b"
    assert chosen["no_smollm2"]["design"] == "a"
    assert nested_choice({}) == {}


def test_extra_readings_are_trained_on_with_their_model_and_never_tested() -> None:
    extras = {"smollm2_extra": "rated", "gemma_extra": "gemma"}
    for protocol, (train, test) in PROTOCOLS.items():
        assert not set(extras) & test, protocol
        for extra, model in extras.items():
            assert (extra in train) == (model in train), (protocol, extra)


def test_extra_readings_never_move_a_tested_text_to_another_fold() -> None:
    scenarios = [f"s{i}" for i in range(12)] * 2
    extra = ["s3", "s3", "s11", "new_a", "new_b", "new_a"]
    folds = extended_folds(scenarios, extra, 5, 0)
    assert folds[:24].tolist() == scenario_folds(scenarios, 5, 0).tolist()
    fold_of = dict(zip(scenarios, folds[:24].tolist()))
    assert folds[24:27].tolist() == [fold_of["s3"], fold_of["s3"], fold_of["s11"]]
    new_a, new_b, new_a_again = folds[27:].tolist()
    assert new_a == new_a_again and {new_a, new_b} <= set(range(5))


def test_the_extra_readings_hold_each_read_text_once_and_only_the_small_models() -> None:
    every, _ = load_extra_readings(set())
    tested = {(every[0].text, every[0].target)}  # a text the caller tests is left out
    rows, hashes = load_extra_readings(tested)
    assert len(rows) == len(every) - 1 and not {(r.text, r.target) for r in rows} & tested
    assert {r.source for r in rows} == {"smollm2_extra", "gemma_extra"}
    assert len({(r.text, r.target) for r in rows}) == len(rows)
    assert len(hashes) == sum(len(paths) for paths in EXTRA_READINGS.values())
    assert all(r.label == r.target for r in rows if r.match)
    assert all(r.label != r.target for r in rows if not r.match)
    assert all(r.scenario for r in rows)


def test_a_design_reads_only_layers_its_reader_caches() -> None:
    gemma_layers = candidate_layers(18)
    assert gemma_layers == (2, 5, 8, 11, 14, 17) and candidate_layers(30)[-1] == 29
    assert parse_design("combined:5-11-17", gemma_layers) == ("combined", (5, 11, 17))
    with pytest.raises(ValueError, match="among the reader's"):
        parse_design("reader:26", gemma_layers)
    # two cached layers of width 4: layer 8 is the second block of columns
    assert layer_columns((8,), 4, (5, 8)).tolist() == [4, 5, 6, 7]


def test_the_documented_nested_choice_is_the_figures_file() -> None:
    figures = json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["nested_choice"]
    docs = (TRANSFER_FIGURES.parents[2] / "docs" / "judge.md").read_text(encoding="utf-8")
    names = {"no_llama": "Llama steered", "no_smollm2": "SmolLM2 fluent_match", "no_gemma": "Gemma fluent_match"}
    assert set(figures) == set(names)
    assert nested_choice(json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["designs"]) == figures
    for protocol, chosen in figures.items():
        shown = ", ".join(f"`{p}`" for p in chosen["chosen_by"])
        f = chosen["figures"]
        row = (f"| `{protocol}` | {shown} | {chosen['design']} | {names[protocol]} "
               f"{100 * f['agreement']:.1f}% ({f['kappa']:.2f}) |")
        assert row in docs, f"{row} is not in docs/judge.md"


def test_no_shipped_judge_was_fitted_on_the_unseen_readings() -> None:
    from emojax.judge.offline import DEFAULT_ARTIFACT
    from emojax.judge.reader_judge import DEFAULT_READER_ARTIFACT
    from experiments.judge_training.data import UNSEEN_READINGS, load_pipeline_rated

    for artefact in (DEFAULT_ARTIFACT, DEFAULT_READER_ARTIFACT):
        fitted = json.loads(artefact.with_suffix(".json").read_text(encoding="utf-8"))["data"]["files"]
        for path, _ in UNSEEN_READINGS.values():
            assert not any(f.endswith(path.name) for f in fitted), (artefact.name, path.name)
    # the replies a fitted text repeats word for word are left out, and the figures count them
    figures = json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["shipped_on_unseen"]
    assert figures["smollm2_quick_test"]["left_out_as_fitted"] == 3
    assert figures["gemma_standard_test"]["left_out_as_fitted"] == 2
    path, conditions = UNSEEN_READINGS["gemma_standard_test"]
    rows, run_fluent, _ = load_pipeline_rated(path, "gemma_standard_test", conditions)
    assert len(rows) == len(run_fluent) == 576 and {r.condition for r in rows} == set(conditions)
    first_baseline = next(i for i, r in enumerate(rows) if r.condition == "baseline")
    with pytest.raises(ValueError, match=f"line {first_baseline + 1}: condition 'baseline' unknown"):
        load_pipeline_rated(path, "gemma_standard_test")  # the pipeline's three conditions only, by default


def test_the_documented_unseen_figures_are_the_figures_file() -> None:
    figures = json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["shipped_on_unseen"]
    docs = (TRANSFER_FIGURES.parents[2] / "docs" / "judge.md").read_text(encoding="utf-8")
    careful = TRANSFER_FIGURES.with_name("transfer_figures_careful.json")
    assert json.loads(careful.read_text(encoding="utf-8"))["shipped_on_unseen"] == figures
    replies = {"smollm2_quick_test": "SmolLM2, quick preset's", "gemma_standard_test": "Gemma, standard preset's"}
    for name, by_judge in figures.items():
        for judge in ("offline", "reader"):
            for condition, f in by_judge[judge].items():
                m, fm = f["match"], f["fluent_match"]
                low, high = fm["reference_interval"]
                cells = (f" | {judge} | {condition} | {100 * m['agreement']:.1f}% ({m['kappa']:.2f}) | "
                         f"{100 * m['judged_rate']:.1f}% vs {100 * m['reference_rate']:.1f}% | "
                         f"{100 * fm['agreement']:.1f}% ({fm['kappa']:.2f}) | {100 * fm['judged_rate']:.1f}% vs "
                         f"{100 * fm['reference_rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] |")
                row = next((line for line in docs.splitlines() if line.endswith(cells)), None)
                assert row is not None and row.startswith(f"| {replies[name]}"), f"{name}: {cells} not in docs"
