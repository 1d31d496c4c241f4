"""A real process running a chunked stage is SIGKILLed at several points and resumed; the outputs
must be bitwise those of an uninterrupted run."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import load_script, subprocess_env

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "tests" / "helpers" / "chunked_worker.py"
# Files that legitimately differ between runs: start times, argv, logs, the lock holder's pid.
RUN_RECORDS = {"manifest.json", "invocations.jsonl", "run.log", "done.json", ".lock"}

if not hasattr(signal, "SIGKILL"):
    pytest.skip("needs SIGKILL", allow_module_level=True)


def _outputs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in RUN_RECORDS}


def _stored_chunks(run_dir: Path) -> int:
    total = 0
    for job in ("features", "records"):
        index = run_dir / "sweep" / job / "index.json"
        if index.exists():
            total += len(json.loads(index.read_text())["chunks"])
    return total


def _start(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=subprocess_env(), cwd=REPO_ROOT)


def _kill_after(run_dir: Path, n_stored: int, extra_delay_s: float) -> str:
    """Start the worker, SIGKILL it once `n_stored` chunks are on disk (plus a delay), return stdout."""
    process = _start(run_dir)
    deadline = time.monotonic() + 60
    while _stored_chunks(run_dir) < n_stored and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(extra_delay_s)
    assert process.poll() is None, "the worker finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return stdout


def test_sigkill_and_resume_gives_the_uninterrupted_outputs(tmp_path):
    worker = load_script(WORKER)
    n_chunks = 2 * (worker.N_ITEMS // worker.CHUNK_SIZE)
    worker.main(str(tmp_path / "reference"))
    reference = _outputs(tmp_path / "reference")

    run_dir = tmp_path / "killed"
    rng = random.Random(20251)
    # One kill early, one around the switch from the first job to the second, one in the second;
    # each leaves at least 6 chunks to go, so the worker is still running when the signal comes.
    thirds = [(1, n_chunks // 4), (n_chunks // 2 - 2, n_chunks // 2 + 1), (n_chunks // 2 + 2, n_chunks - 6)]
    kill_points = [rng.randint(low, high) for low, high in thirds]
    computed = []
    for point in kill_points:
        computed += _kill_after(run_dir, point, rng.uniform(0.0, worker.SLEEP_S)).splitlines()
        assert not (run_dir / "sweep" / "done.json").exists()
    final = _start(run_dir)
    stdout, _ = final.communicate(timeout=60)
    assert final.returncode == 0 and stdout.rstrip().endswith("finished")
    computed += [line for line in stdout.splitlines() if line.startswith("computed")]

    assert _outputs(run_dir) == reference
    # Each kill loses at most the chunk in progress; everything stored before it is reused.
    assert n_chunks <= len(computed) <= n_chunks + len(kill_points)
    invocations = [json.loads(line) for line in (run_dir / "invocations.jsonl").read_text().splitlines()]
    assert [i["resumed"] for i in invocations] == [False, True, True, True]
    assert "resuming, " in (run_dir / "run.log").read_text()
