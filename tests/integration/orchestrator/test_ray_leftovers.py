"""No Ray process outlives the test that started it, even when its start is cut short.

A Ray GCS is the first daemon a head starts and it does not die with its starter: the
coordinator's head helper (`python -m orchestrator.runtime head`) and `ray start` both
leave it running, parent pid 1, if they are killed before the rest comes up. These tests
cut a start short right after the GCS appears and check that what cleans up after a test
(support.leftovers' watcher, ray_nodes.end_ray) leaves no process of that start behind.
Processes are found by this test's own mark or temporary directory, never by name.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from support.leftovers import MARK_ENV, marked, new_mark
from support.processes import describe
from support.ray_nodes import RAY_PACKAGE, end_ray, ray_env, ray_start, ray_temp_dir, started
from support.worker_process import free_port

from orchestrator.reaper import session_processes

TESTS = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 20.0


Find = Callable[[], list[psutil.Process]]


def _wait_for_gcs(
    find: Find, starter: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(_name(p) == "gcs_server" for p in find()):
            return
        assert starter.poll() is None, "the start ended before its GCS appeared"
        time.sleep(0.02)
    raise TimeoutError("no GCS appeared")


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _wait_none(find: Find, timeout: float = GONE_WITHIN_S) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# A test run in miniature: it holds the watcher's pipe (support.leftovers.Watcher, as
# tests/conftest.py does) and starts the coordinator's Ray head helper, then waits.
DRIVER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from support.leftovers import Watcher
    watcher = Watcher(os.environ["LLAMAHERD_TEST_MARK"])
    subprocess.Popen([sys.executable, "-m", "orchestrator.runtime", "head", "0", sys.argv[1]],
                     start_new_session=True)
    time.sleep(600)
    """
)


def test_a_test_run_killed_while_a_ray_head_starts_leaves_no_ray_behind(tmp_path):
    mark = new_mark("leftovers-test")
    env = {
        **os.environ, MARK_ENV: mark, "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": f"{TESTS}:{os.environ.get('PYTHONPATH', '')}",
    }  # fmt: skip
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "head.json")], env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_gcs(lambda: marked(mark), driver)
        # Cut the start short: the head helper dies (as subprocess.run's timeout or a
        # failing raylet does), and so does the run that started it.
        for process in marked(mark):
            if process.cmdline()[-3:-2] == ["head"]:
                process.kill()
        time.sleep(1.0)
        lone = [p for p in marked(mark) if _name(p) == "gcs_server"]
        assert lone and lone[0].ppid() == 1, describe(marked(mark))  # the lone GCS
        driver.kill()
        driver.wait()
        left = _wait_none(lambda: marked(mark))
        assert not left, f"left after the run died:\n{describe(left)}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for process in marked(mark):  # only if the test failed
            process.kill()


def test_an_interrupted_ray_start_is_ended_by_its_temp_dir():
    temp_dir = ray_temp_dir("cut")
    starting = ray_start(
        [], ray_env(secrets.token_hex(32)), "--head", "--node-ip-address", "127.0.0.1",
        "--port", "0", "--include-dashboard=false", "--temp-dir", temp_dir,
    )  # fmt: skip

    def ours() -> list[psutil.Process]:
        return list(session_processes(Path(temp_dir), RAY_PACKAGE, exclude=os.getpid()))

    try:
        _wait_for_gcs(ours, starting)
        # The fixture fails here (another host's start failed, a KeyboardInterrupt) and
        # tears down: end_ray, with `ray start` still starting the raylet.
        end_ray(temp_dir)
        assert starting.poll() is not None
        time.sleep(3.0)  # nothing starts anything later
        left = ours()
        assert not left, f"left after end_ray:\n{describe(left)}"
        assert not Path(temp_dir).exists()
    finally:
        if starting.poll() is None:
            starting.kill()
        end_ray(temp_dir)


def test_a_started_head_is_ended_with_its_ray_client_server():
    """`ray start --head` as the two-node tests start it, Ray Client server included: that
    one names neither the temp dir nor Ray's package on its command line."""
    temp_dir = ray_temp_dir("full")
    mark = new_mark("full-head")  # every process of this head, and nothing else
    head = ray_start(
        [], {**ray_env(secrets.token_hex(32)), MARK_ENV: mark}, "--head",
        "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
        "--include-dashboard=false", "--ray-client-server-port", str(free_port()),
        "--temp-dir", temp_dir,
    )  # fmt: skip
    try:
        started(head)
        ours = marked(mark)
        commands = [" ".join(p.cmdline()) for p in ours]
        assert any("ray.util.client.server" in c for c in commands), describe(ours)
        end_ray(temp_dir)
        left = marked(mark)
        assert not left, f"left after end_ray:\n{describe(left)}"
    finally:
        end_ray(temp_dir)
        for process in marked(mark):  # only if the test failed
            process.kill()
