"""Environment errors and signals as launchers report them: one line and exit 2 for a full disk and an
--out that cannot be created; "interrupted; rerun the same command to resume" and 130 / 143 for SIGINT
and SIGTERM. Smaller input cases: a directory as a dataset, a NUL character in a scenario."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, subprocess_env
from emojax.data import DatasetError, load_dataset

HELPER = REPO_ROOT / "tests" / "helpers" / "full_disk_launcher.py"


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, str(HELPER), "--mode=full"], capture_output=True, text=True,
                            env=subprocess_env(), cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 2
    assert _errors(result) == ["error: a write failed: no space left on the device; free some space, then rerun the "
                               "same command to resume"]


def test_an_atomic_write_on_a_full_disk_names_its_file(tmp_path, monkeypatch):
    """A failed write() carries no file name; emojax's writers add the one they were writing."""
    import errno
    import os

    from emojax.runs import write_text
    from emojax.runs.environment_errors import environment_message

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as raised:
        write_text(tmp_path / "out.txt", "x")
    assert environment_message(raised.value) == (f"cannot write {tmp_path / 'out.txt'}: no space left on the device; "
                                                 "free some space, then rerun the same command to resume")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_is_one_line_and_the_shell_status(signum, status):
    process = subprocess.Popen([sys.executable, str(HELPER), "--mode=wait"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO_ROOT)
    assert process.stdout.readline().strip() == "waiting"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["interrupted; rerun the same command to resume"]


def _elicit(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.elicit", *flags], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300, env=subprocess_env(EMOJAX_CACHE_DIR=str(tmp_path / "cache")))


def test_an_out_that_cannot_be_created_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _elicit(tmp_path, f"--out={tmp_path / 'file' / 'run'}")
    assert result.returncode == 2
    assert _errors(result) == [f"error: --out={tmp_path / 'file' / 'run'}: cannot be created, because "
                               f"{tmp_path / 'file'} is not a directory; choose another --out"]


def test_a_cache_dir_that_is_a_file_stops_a_launcher_before_the_model_loads(tmp_path):
    bad = tmp_path / "cache-file"
    bad.write_text("x")
    result = subprocess.run([sys.executable, "-m", "experiments.elicit", f"--out={tmp_path / 'run'}",
                             f"--cache_dir={bad}"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            env=subprocess_env())
    assert result.returncode == 2
    assert _errors(result) == [f"error: cache directory {bad} cannot be used (File exists); point $EMOJAX_CACHE_DIR "
                               "or --cache_dir at a writable directory"]
    assert not (tmp_path / "run").exists()


def test_a_directory_as_a_dataset_is_called_a_directory(tmp_path):
    with pytest.raises(DatasetError, match=rf"^{tmp_path}: is a directory, not a SEV .jsonl file"):
        load_dataset(str(tmp_path))


def test_a_nul_character_in_a_scenario_is_refused(tmp_path):
    record = json.loads(Path(REPO_ROOT / "emojax" / "data" / "bundled" / "test.jsonl").read_text().splitlines()[0])
    record["scenario"] = record["scenario"][:5] + "\0" + record["scenario"][5:]
    path = tmp_path / "nul.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DatasetError, match=rf"^{path}:1: field 'scenario': holds a NUL character \(at 5\); remove it$"):
        load_dataset(str(path))


_UNTIL_SCRIPT = """
import sys, types
from pathlib import Path
import experiments.pipeline as pipeline
from emojax.launch.pipeline import STAGE_NAMES
run = types.SimpleNamespace(path=Path(sys.argv[1]))
pipeline.context_from_flags = lambda values: types.SimpleNamespace(run=run)
pipeline.Options.for_preset = staticmethod(lambda ctx, **kw: None)
pipeline.run_pipeline = lambda ctx, options, until: {"summaries": {until: {}}, "timings": {}, "skipped": []}
pipeline.FLAGS([sys.argv[0], f"--out={sys.argv[1]}", f"--until={STAGE_NAMES[0]}"])
pipeline.main([sys.argv[0]])
"""


def test_until_does_not_name_a_report_it_did_not_write(tmp_path):
    result = subprocess.run([sys.executable, "-c", _UNTIL_SCRIPT, str(tmp_path / "run")], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=120, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report:" not in result.stdout
    assert result.stdout.startswith("stopped after --until=") and "no report written" in result.stdout
