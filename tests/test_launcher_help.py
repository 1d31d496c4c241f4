"""Every launcher's --help lists all of its flags, each with its help string."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env

HELPER = REPO_ROOT / "tests" / "helpers" / "launcher_flags.py"
EXPERIMENTS = REPO_ROOT / "experiments"
# Dotted names below experiments/: the stage launchers, bench.benchmark, judge_training.train, ...
LAUNCHERS = sorted(".".join(path.relative_to(EXPERIMENTS).with_suffix("").parts)
                   for path in EXPERIMENTS.rglob("*.py") if 'if __name__ == "__main__":' in path.read_text())
SHARED_FLAGS = ("out", "model", "train", "test", "preset", "judge", "mesh", "force_new_run", "steer_alpha")


@functools.cache
def launcher_flags() -> dict:
    result = subprocess.run([sys.executable, str(HELPER), *(f"experiments.{n}" for n in LAUNCHERS)],
                            capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_launchers_are_found():
    assert {"pipeline", "elicit", "steer", "rate", "bench.benchmark", "judge_training.train"} <= set(LAUNCHERS)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_help_lists_every_flag_with_its_help(name):
    found = launcher_flags()[f"experiments.{name}"]
    assert list(found["owners"]) == [f"experiments.{name}"], f"flags filed under other modules: {found['owners']}"
    assert found["flag_help"], f"experiments.{name} defines no flags"
    assert not found["undefined"], f"experiments.{name} reads flags nothing it imports defines: {found['undefined']}"
    for flag, text in found["flag_help"].items():
        assert text and text.strip(), f"--{flag} of experiments.{name} has no help string"
        assert re.search(rf"--(\[no\])?{flag}: ", found["help"]), f"--{flag} missing from experiments.{name} --help"
    if "context_from_flags" in (EXPERIMENTS / f"{name.replace('.', '/')}.py").read_text():
        assert set(SHARED_FLAGS) <= set(found["flag_help"])


@pytest.mark.slow
def test_pipeline_help_shows_the_shared_flags():
    result = subprocess.run([sys.executable, "-m", "experiments.pipeline", "--help"], capture_output=True,
                            text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=300)
    for flag in ("out", "preset", "judge", "until", "model"):
        assert re.search(rf"--(\[no\])?{flag}: \S", result.stdout), (flag, result.stdout[-2000:], result.stderr[-2000:])
