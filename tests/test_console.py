"""A launcher's terminal output: short console lines and warnings by default, the full log on request."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env

WORKER = REPO_ROOT / "tests" / "helpers" / "console_worker.py"


def run_worker(tmp_path, *flags: str) -> tuple[str, str]:
    log = tmp_path / "run.log"
    result = subprocess.run([sys.executable, str(WORKER), str(log), *flags], capture_output=True, text=True,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr, log.read_text()


def test_default_output_keeps_console_lines_and_warnings_only(tmp_path):
    terminal, log = run_worker(tmp_path)
    lines = terminal.strip().splitlines()
    assert len(lines) == 2, terminal
    assert lines[0] == "[00:00] stage 3 done"
    assert "a warning that matters" in lines[1]
    # The run's own log still gets every record.
    for text in ("library info line", "backend probe line", "stage 3 done", "a warning that matters"):
        assert text in log


@pytest.mark.parametrize("flag", ["--verbosity=0", "-v", "--alsologtostderr"])
def test_logging_flags_bring_the_full_log_back(tmp_path, flag):
    flags = [flag, "1"] if flag == "-v" else [flag]
    terminal, _ = run_worker(tmp_path, *flags)
    for text in ("library info line", "backend probe line", "stage 3 done", "a warning that matters"):
        assert text in terminal
    assert "[00:00]" not in terminal  # console lines are ordinary log records then
