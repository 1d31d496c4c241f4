"""Progress: a bar at a terminal, occasional log lines under CI or without a terminal."""
from __future__ import annotations

import io

import pytest
from emojax.runs import progress as progress_lib
from emojax.runs.progress import Progress, format_seconds, interactive, track


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def logged(monkeypatch):
    lines: list[str] = []
    def record(fmt: str, *args: object) -> None:
        lines.append((fmt % args).strip())
    monkeypatch.setattr(progress_lib.logging, "info", record)   # the closing line
    monkeypatch.setattr(progress_lib, "say", record)            # the periodic console lines
    return lines


def test_interactive_only_at_a_terminal_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stderr", _Tty())
    assert interactive()
    monkeypatch.setenv("CI", "true")
    assert not interactive()
    monkeypatch.setenv("CI", "false")
    assert interactive()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not interactive()


def test_under_ci_no_bar_and_occasional_log_lines(monkeypatch, logged):
    stderr = _Tty()
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.setenv("CI", "1")
    now = [0.0]

    def clock() -> float:  # each reading advances 10 s
        now[0] += 10.0
        return now[0]
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    items = list(track(range(6), desc="steer", unit="prompt", log_every_s=25.0))
    assert items == list(range(6))
    assert stderr.getvalue() == ""  # no bar
    assert 1 < len(logged) < 6  # throttled, plus the final line
    assert logged[-1].startswith("steer: 6/6 prompt (100%) elapsed")
    assert "ETA" in logged[0]


def test_bar_at_a_terminal(monkeypatch, logged):
    stderr = _Tty()
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.delenv("CI", raising=False)
    with Progress(4, desc="scan", unit="variant", initial=1) as progress:
        progress.update(3)
    drawn = stderr.getvalue()
    assert "scan" in drawn and "1/4" in drawn
    assert drawn.endswith("\r") and drawn.split("\r")[-2].strip() == ""  # the bar is blanked when it closes
    assert logged == []


def test_status_line_after_resume_counts_only_fresh_work(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_lib.time, "monotonic", lambda: now[0])
    progress = Progress(100, desc="job", unit="item", initial=50, bar=False)
    now[0] = 10.0
    progress.done = 60  # 10 fresh items in 10 s: 40 left at 1 item/s
    assert progress.status_line() == "job: 60/100 item (60%) elapsed 10s ETA 40s"


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m05s"]
