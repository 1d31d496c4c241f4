"""One writer per run directory: a second process on a locked run is refused with one line naming the
holder, `--force_new_run` never moves a locked run, a lock left by a dead process is taken over, and
one process may open its own run again."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, default_gguf, subprocess_env
from emojax.runs import InputError, RunDir
from emojax.runs.lock import LOCK_NAME, RunLockedError
from emojax.runs.rundir import check_out_creatable

WORKER = REPO_ROOT / "tests" / "helpers" / "locked_run_worker.py"
HOLDER = r"in use by another run \(pid (\d+), started \d{4}-\d\d-\d\dT[\d:]+\+00:00\)"


class _Holder:
    """The worker process holding `run` until `finish()`."""

    def __init__(self, run: Path, tmp_path: Path) -> None:
        self.release = tmp_path / "release"
        self.process = subprocess.Popen([sys.executable, str(WORKER), str(run), str(self.release)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=subprocess_env(), cwd=REPO_ROOT)
        first = self.process.stdout.readline()
        assert first.strip() == "locked", self.process.stderr.read()

    def finish(self) -> tuple[int, str]:
        self.release.touch()
        stdout, stderr = self.process.communicate(timeout=60)
        assert stdout.strip() == "finished", stderr
        return self.process.returncode, stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=30)


@pytest.fixture()
def held_run(tmp_path):
    run = tmp_path / "run"
    holder = _Holder(run, tmp_path)
    yield run, holder
    holder.kill()


def test_a_second_open_is_refused_naming_the_holder(held_run):
    run, holder = held_run
    with pytest.raises(RunLockedError, match=HOLDER) as refused:
        RunDir.open(run, flags={"worker": "second"}, log_to_file=False)
    assert int(re.search(HOLDER, str(refused.value)).group(1)) == holder.process.pid
    with pytest.raises(RunLockedError, match="--force_new_run does not move a run that is in use"):
        RunDir.open(run, flags={"worker": "second"}, force_new=True, log_to_file=False)
    assert sorted(p.name for p in run.parent.iterdir() if p.name.startswith("run")) == ["run"]
    assert holder.finish()[0] == 0
    assert (run / "work" / "out.txt").is_file()
    assert json.loads((run / "manifest.json").read_text())["identity"]["flags"] == {"worker": "first"}


@pytest.mark.skipif(default_gguf() is None, reason="the default model is not installed")
@pytest.mark.parametrize("extra", [[], ["--force_new_run"]], ids=["plain", "force_new_run"])
def test_a_second_launch_exits_2_while_the_first_completes(held_run, tmp_path, extra):
    run, holder = held_run
    result = subprocess.run([sys.executable, "-m", "experiments.elicit", f"--out={run}", *extra],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            env=subprocess_env(EMOJAX_CACHE_DIR=str(tmp_path / "cache")))
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert re.search(rf"error: {re.escape(str(run))} is {HOLDER}", errors[0]), errors[0]
    assert int(re.search(HOLDER, errors[0]).group(1)) == holder.process.pid
    assert sorted(p.name for p in run.parent.iterdir() if p.name.startswith("run")) == ["run"]
    code, _ = holder.finish()
    assert code == 0 and (run / "work" / "done.json").is_file()
    assert json.loads((run / "manifest.json").read_text())["identity"]["flags"] == {"worker": "first"}


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "elsewhere", "started": "2000-01-01T00:00:00+00:00"}))
    with caplog.at_level("INFO", logger="absl"):
        with RunDir.open(run, flags={"a": 1}, log_to_file=False):
            assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {pid}" in caplog.text


def test_one_process_may_open_its_run_again_and_move_it_aside(tmp_path):
    run = tmp_path / "run"
    with RunDir.open(run, flags={"a": 1}, log_to_file=False):
        with RunDir.open(run, flags={"a": 1}, log_to_file=False) as again:
            assert again.invocations[-1]["resumed"]
        with RunDir.open(run, flags={"a": 2}, force_new=True, log_to_file=False) as fresh:
            assert fresh.moved_aside is not None and (fresh.moved_aside / LOCK_NAME).is_file()
            assert (run / LOCK_NAME).is_file()


def test_a_directory_holding_only_the_lock_file_is_a_new_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text("")
    with RunDir.open(run, flags={"a": 1}, log_to_file=False) as opened:
        assert not opened.invocations[-1]["resumed"]


def test_an_out_that_cannot_be_created_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=rf"--out={tmp_path}/file/run: cannot be created, because {tmp_path}/file "
                                         r"is not a directory; choose another --out"):
        check_out_creatable(tmp_path / "file" / "run")
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_out_creatable(tmp_path / "file")
    check_out_creatable(tmp_path / "new" / "deeper" / "run")
    assert not (tmp_path / "new").exists()
