"""experiments.bench.paper_scale end to end at the tiny shape: every stage runs and reports its
figures, the projection's arithmetic adds up, and budgets too small are refused in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env
from experiments.bench.common import shape_config
from experiments.bench.paper_stages import STAGES
from experiments.bench.paper_workload import full_units

LAUNCHER = [sys.executable, "-m", "experiments.bench.paper_scale", "--shape=tiny", "--dtype=float32"]
SMALL = ["--prompt_tokens=8", "--new_tokens=2", "--scan_prompts=2", "--scan_layers=0,2"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHER, *args], capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT,
                          timeout=600)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("paper_scale") / "tiny.json"
    result = _run(*SMALL, f"--json={path}")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(path.read_text()), result.stdout


# About a minute on a 2-core CPU, nearly all of it compiling the eleven stages' programs.
@pytest.mark.slow
def test_every_stage_runs_with_its_figures(report):
    data, stdout = report
    config = shape_config("tiny")
    assert {"shape", "dtype", "device", "stages", "projection"} <= set(data)
    assert list(data["stages"]) == list(STAGES)
    for name, figures in data["stages"].items():
        assert figures["wall_s"] > 0 and figures["peak_host_mib"] > 0, name
        assert f"| {name} |" in stdout
    assert data["stages"]["neuron_scan"]["chunks"]["neurons"]["rows"] == config.d_ff  # the default budget is roomy
    assert data["stages"]["capture"]["gflop"] > 0 and data["stages"]["capture"]["pct_of_peak"] > 0
    assert data["settings"]["scan_layers"] == [0, 2]


@pytest.mark.slow
def test_the_projection_shows_per_unit_time_times_count(report):
    data, _ = report
    config = shape_config("tiny")
    projection = data["projection"]
    for name, row in projection["stages"].items():
        figures = data["stages"][name]
        assert row["per_unit_s"] == pytest.approx(figures["wall_s"] / figures["units"])
        assert row["count"] == full_units(name, config)[0]
        assert row["total_s"] == pytest.approx(row["per_unit_s"] * row["count"])
    assert projection["total_s"] == pytest.approx(sum(r["total_s"] for r in projection["stages"].values()))
    # The scans were measured on layers 0 and 2 of 3: units count each variant's layers (3 and 1).
    assert data["stages"]["neuron_scan"]["units"] == config.d_ff * 2 * (3 + 1)


def test_a_budget_below_the_weights_is_one_line_naming_them():
    result = _run("--memory_budget_gb=0.0001")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights: tiny in float32 needs "), result.stderr


def test_a_tight_budget_plans_small_chunks_drops_the_decode_copy_and_names_the_stages_that_do_not_fit():
    # 1.7 MiB: one prompt row, and one generation row only without the decode step's weight copy.
    result = _run("--memory_budget_gb=0.0017", "--plan_only")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| capture |" in result.stdout and "prompts 1 (plan" in result.stdout
    assert "| generation_prompted | 0." in result.stdout and "rows, low_memory (no weight copy) 1 (plan" in result.stdout
    roomier = _run("--memory_budget_gb=0.0022", "--plan_only")  # the copy fits beside one row
    assert "low_memory" not in roomier.stdout and "rows 1 (plan" in roomier.stdout
    tight = _run("--memory_budget_gb=0.0014", "--plan_only")  # not even one row without the copy
    assert "| generation_prompted | not run: prompted generation (low_memory): one row needs " in tight.stdout
