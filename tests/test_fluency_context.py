"""The fluency-context experiment: its figures by hand, and docs/judge.md's table from its figures file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.judge_training.data import LabelledText
from experiments.judge_training.fluency_context import CONTEXTS, fluency_only_figures

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "experiments" / "judge_training" / "fluency_context_figures.json"


def _row(condition: str, match: int, fluent: int) -> LabelledText:
    return LabelledText("text", "anger", match, "anger" if match else "none", "s", "rated", condition, fluent)


def test_fluent_match_takes_the_reference_match_so_only_fluency_can_differ() -> None:
    rows = [_row("steering", 1, 1), _row("steering", 0, 1), _row("circuit", 1, 0), _row("circuit", 1, 1)]
    judged = np.array([0, 1, 1, 1])  # wrong on the first (a match) and the third (a match)
    out = fluency_only_figures(rows, judged)
    assert out["overall"]["fluent"]["agreement"] == 0.5
    assert out["overall"]["fluent_match"]["agreement"] == 0.5   # reference 1,0,0,1 vs judged 0,0,1,1
    assert out["steering"]["fluent_match"]["agreement"] == 0.5  # the non-match never counts
    assert out["circuit"]["fluent_rate"] == {"judged": 1.0, "read": 0.5}
    assert out["prompting"]["fluent"]["n"] == 0 and out["prompting"]["fluent_rate"] == {"judged": None, "read": None}


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_the_documented_table_is_the_figures_file() -> None:
    figures = json.loads(FIGURES.read_text(encoding="utf-8"))
    docs = (REPO / "docs" / "judge.md").read_text(encoding="utf-8")
    for part in ("cross_validated", "smollm2_quick_test", "gemma_quick_test"):
        for context in CONTEXTS:
            overall = figures[part][context]["overall"]
            fluent, rate, fluent_match = overall["fluent"], overall["fluent_rate"], overall["fluent_match"]
            cells = (f"| {_percent(fluent['agreement'])} ({fluent['kappa']:.2f}) | {_percent(rate['judged'])} vs "
                     f"{_percent(rate['read'])} | {_percent(fluent_match['agreement'])} ({fluent_match['kappa']:.2f}) |")
            assert cells in docs, f"{part} / {context}: {cells} is not in docs/judge.md"
    assert f"correlate at {figures['log_perplexity_correlation']:.2f}" in docs
