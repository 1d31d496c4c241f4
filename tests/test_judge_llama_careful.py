"""Careful reading of every official Llama steered reply: the loader's checks and what it gives the trainer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.judge_training.data import (LLAMA_READ_FILE, LLAMA_READING_FILE, LabelledText, double_readings,
                                             load_llama_careful, load_official)
from experiments.judge_training.llama_reading import (against_careful, careful_labels, careful_matches,
                                                      census_figures)

TRANSFER_FIGURES = Path(__file__).resolve().parents[1] / "experiments" / "judge_training" / "transfer_figures.json"


def _official(shared_dir: Path) -> Path:
    return shared_dir / "data" / "official"


def _rewritten(tmp_path: Path, line: int, change) -> Path:
    lines = LLAMA_READ_FILE.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[line])
    change(record)
    lines[line] = json.dumps(record)
    path = tmp_path / "read.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_steered_reply_is_read_once(shared_dir: Path) -> None:
    careful, hashes = load_llama_careful(_official(shared_dir))
    official, _, _ = load_official(_official(shared_dir), False)
    steered = [r for r in official if r.source == "unprompted"]
    assert len(careful) == len(steered) == 1440 and {r.key for r in steered} == set(careful)
    assert set(hashes) == {f"experiments/judge_training/labels/{p.name}" for p in (LLAMA_READING_FILE, LLAMA_READ_FILE)}
    for match, label, fluent in careful.values():
        assert match in (0, 1) and fluent in (0, 1) and (label != "none" or not match)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(gpt_match=1 - r["gpt_match"]), "line 4: gpt_match"),
    (lambda r: r.update(skeleton_id="nowhere_99"), "line 4: no official steered reply nowhere_99"),
    (lambda r: r.pop("label"), "line 4: field 'label' is missing"),
    (lambda r: r["label"].update(match=2), "line 4: bad label"),
    (lambda r: r["label"].pop("dominant"), "line 4: bad label"),
    (lambda r: r.update(text_sha256="0" * 16), "line 4: text_sha256 0+ is not that of the official reply"),
])
def test_a_bad_reading_names_its_line(shared_dir: Path, tmp_path: Path, change, message: str) -> None:
    bad = _rewritten(tmp_path, 3, change)
    with pytest.raises(ValueError, match=message):
        load_llama_careful(_official(shared_dir), (LLAMA_READING_FILE, bad))


def test_a_reply_read_twice_or_never_is_refused(shared_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is read twice"):
        load_llama_careful(_official(shared_dir), (LLAMA_READING_FILE, LLAMA_READ_FILE, LLAMA_READING_FILE))
    with pytest.raises(ValueError, match="1326 official steered replies are read in none"):
        load_llama_careful(_official(shared_dir), (LLAMA_READING_FILE,))


def test_careful_labels_teach_the_reading_and_keep_gpt_as_the_reference() -> None:
    steered = LabelledText("text", "anger", 1, "anger", "s", "unprompted", key="s/positive/anger")
    other = LabelledText("text", "anger", 1, "anger", "s", "rated")
    careful = {"s/positive/anger": (0, "sadness", 1)}
    taught = careful_labels([steered, other], careful)
    assert (taught[0].label, taught[0].match) == ("sadness", 1) and taught[1] == other
    judged = against_careful([steered, other], careful)
    assert (judged[0].match, judged[0].label) == (0, "anger") and judged[1] == other
    assert careful_matches([steered, other], careful).tolist() == [0, -1]


def test_the_figures_file_holds_the_census(shared_dir: Path) -> None:
    careful, _ = load_llama_careful(_official(shared_dir))
    official, _, _ = load_official(_official(shared_dir), False)
    figures = census_figures(official, careful, double_readings())
    recorded = json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["llama_careful"]
    assert {k: v for k, v in recorded.items() if k != "files"} == figures
    assert figures["n"] == 1440 and figures["second_vs_first"]["n"] == 136
    assert figures["careful_vs_gpt"]["kappa"] == pytest.approx(0.53, abs=5e-3)
    assert np.isclose(figures["careful_rate"], 1149 / 1440, atol=1e-4)


def test_the_documented_careful_figures_are_the_figures_file() -> None:
    designs = json.loads(TRANSFER_FIGURES.read_text(encoding="utf-8"))["designs"]
    docs = (TRANSFER_FIGURES.parents[2] / "docs" / "judge.md").read_text(encoding="utf-8")
    for design, figures in designs.items():
        for protocol in ("no_llama", "all"):
            c = figures[protocol]["llama_steered_careful"]["match"]
            g = figures[protocol]["llama_steered"]["match"]
            row = (f"| {design} | {protocol} | {100 * c['agreement']:.1f}% ({c['kappa']:.2f}), "
                   f"{100 * c['judged_rate']:.1f}% vs {100 * c['reference_rate']:.1f}% | "
                   f"{100 * g['agreement']:.1f}% ({g['kappa']:.2f}) |")
            assert row in docs, f"{row} is not in docs/judge.md"


def test_the_documented_careful_protocol_is_its_figures_file() -> None:
    careful = json.loads(TRANSFER_FIGURES.with_name("transfer_figures_careful.json").read_text(encoding="utf-8"))
    docs = (TRANSFER_FIGURES.parents[2] / "docs" / "judge.md").read_text(encoding="utf-8")
    assert careful["llama_steered_labels"] == "careful"
    for design, v in careful["designs"].items():
        llama, read = v["no_llama"]["llama_steered"]["match"], v["no_llama"]["llama_steered_careful"]["match"]
        smollm2, circuit = v["no_smollm2"]["smollm2_all"]["fluent_match"], v["no_smollm2"]["smollm2_circuit"]["match"]
        gemma = v["no_gemma"]["gemma_all"]["fluent_match"]
        neutral = max(v[p]["neutral_false_match"]["max"] for p in ("no_llama", "no_smollm2", "no_gemma"))
        row = (f"| {design} | {100 * llama['agreement']:.1f}% ({llama['kappa']:.2f}); "
               f"{100 * read['agreement']:.1f}% ({read['kappa']:.2f}) | "
               f"{100 * smollm2['agreement']:.1f}% ({smollm2['kappa']:.2f}) | {100 * circuit['agreement']:.1f}% | "
               f"{100 * gemma['agreement']:.1f}% ({gemma['kappa']:.2f}) | {100 * neutral:.1f}% |")
        assert row in docs, f"{row} is not in docs/judge.md"
    sidecar = json.loads((TRANSFER_FIGURES.parents[2] / "emojax" / "judge" / "artifacts" / "reader_judge.json")
                         .read_text(encoding="utf-8"))
    assert sidecar["llama_steered_labels"] == "careful" and sidecar["design"] == "combined:14"
    assert sidecar["held_out"] == careful["designs"]["combined:14"]
