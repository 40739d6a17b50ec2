"""The coordinator's Ray head start leaves no Ray behind when it does not finish: the
coordinator killed mid-start (its start reaper ends the head helper and what it started),
or a start that times out (the coordinator ends them itself). Ray's GCS is up before the
rest and, started in a session of its own, outlives its starter: before, either left a
lone gcs_server. Real Ray heads; the processes are found by the test's mark in their
environment (support.leftovers), never by name."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.leftovers import MARK_ENV, end_marked, marked, new_mark, submark

from orchestrator import runtime

# A coordinator stand-in: starts the head as `llamaherd coordinator` does, then hangs.
COORDINATOR = """
import sys, time
from pathlib import Path
from orchestrator.runtime import _start_head
_start_head(Path(sys.argv[1]))
time.sleep(600)
"""


def _mark() -> str:
    run = os.environ.get(MARK_ENV) or new_mark("head-start")
    return submark(run, "head-start-" + secrets.token_hex(4))


def _wait_for(what: str, condition, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


def _gcs_up(mark: str) -> bool:
    return any("gcs_server" in _name(p) for p in marked(mark))


def _gcs_temp_dir(mark: str) -> Path | None:
    """The Ray temp dir of the marked GCS (its --log_dir is TEMP_DIR/session_.../logs)."""
    for process in marked(mark):
        try:
            for arg in process.cmdline():
                if arg.startswith("--log_dir="):
                    return Path(arg.split("=", 1)[1]).parents[1]
        except psutil.Error:
            continue
    return None


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _left(mark: str, timeout: float = 30.0) -> list[str]:
    """What still carries `mark` after `timeout` (the start's reaper may still be sweeping)."""
    deadline = time.monotonic() + timeout
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"{p.pid} {_name(p)}" for p in left]


def test_a_coordinator_killed_mid_start_leaves_no_ray(tmp_path: Path) -> None:
    mark = _mark()
    env = {**os.environ, MARK_ENV: mark, "RAY_USAGE_STATS_ENABLED": "0"}
    coordinator = subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, str(tmp_path / "state")], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for("GCS", lambda: _gcs_up(mark) or coordinator.poll() is not None)
        assert coordinator.poll() is None, "the start ended before the GCS was seen"
        temp_dir = _gcs_temp_dir(mark)
        coordinator.send_signal(signal.SIGKILL)  # between the GCS and the end of the start
        coordinator.wait()
        assert _left(mark) == []
        assert temp_dir is not None and temp_dir.name.startswith("llamaherd-ray-")
        assert not temp_dir.exists(), "the cut-short start's own Ray temp dir was left"
    finally:
        coordinator.kill()
        end_marked(mark)


def test_a_start_that_times_out_leaves_no_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = _mark()
    monkeypatch.setenv(MARK_ENV, mark)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setattr(runtime, "START_TIMEOUT_S", 0.1)
    tell = runtime._tell

    def told(guard: subprocess.Popen[bytes], line: str) -> None:
        tell(guard, line)
        if line.startswith("pid "):  # the helper is starting: its time runs out with a GCS up
            _wait_for("GCS", lambda: _gcs_up(mark))

    monkeypatch.setattr(runtime, "_tell", told)
    try:
        with pytest.raises(RuntimeError, match="timed out"):
            runtime._start_head(tmp_path / "state")
        assert _left(mark, timeout=0) == [], "the failed start returned with Ray running"
    finally:
        end_marked(mark, exclude=frozenset({os.getpid()}))
