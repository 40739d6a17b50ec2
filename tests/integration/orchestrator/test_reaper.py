"""orchestrator.reaper with real processes: once its driver's pipe closes, it ends the Ray
processes of its session, and nothing else (another session's, a user's `tail -f` of the
session's logs). A second or two: no Ray is started, the "Ray processes" are Python scripts
run from a directory passed as Ray's package directory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
from support.processes import wait_gone

from orchestrator.reaper import reap

# Holds a log file open under the session directory given, like Ray's daemons and agents.
HOLDER = """
import sys, time
log = open(sys.argv[1], "a")
print("ready", flush=True)
time.sleep(120)
"""


def _hold(script: Path, log: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(script), str(log)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_the_reaper_ends_its_sessions_ray_processes_once_the_driver_is_gone(tmp_path):
    ray_dir = tmp_path / "site-packages" / "ray"
    ray_dir.mkdir(parents=True)
    holder = ray_dir / "agent.py"  # run from Ray's package: a Ray process
    holder.write_text(HOLDER)
    user_script = tmp_path / "tail.py"  # the same, run from elsewhere: a user's
    user_script.write_text(HOLDER)
    session, other = tmp_path / "session_1", tmp_path / "session_12"  # a prefix, not inside
    for directory in (session, other):
        (directory / "logs").mkdir(parents=True)

    agent = _hold(holder, session / "logs" / "agent.log")
    other_agent = _hold(holder, other / "logs" / "agent.log")
    tail = _hold(user_script, session / "logs" / "agent.log")
    reaper = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.reaper", str(session), str(ray_dir)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        assert agent.poll() is None, "the reaper must wait for its driver's end"
        assert reaper.stdin is not None
        reaper.stdin.close()  # what the kernel does when the driver dies
        assert reaper.wait(15) == 0, reaper.stderr.read() if reaper.stderr else ""
        assert not wait_gone([psutil.Process(agent.pid)], 5)
        assert agent.wait(1) == -9
        assert other_agent.poll() is None, "another session's process was ended"
        assert tail.poll() is None, "a user's process reading the session's logs was ended"
    finally:
        for process in (agent, other_agent, tail, reaper):
            if process.poll() is None:
                process.kill()
                process.wait()


def _client_server(site: Path, log: Path) -> subprocess.Popen[str]:
    """`python -m ray.util.client.server`, as the Ray Client server of a head started with
    `ray start --head` runs (its command line names no file of Ray's package), holding a log
    file open like the real one; `site` holds a stand-in `ray` package."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.util.client.server", str(log)],
        cwd=site, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_the_reaper_ends_its_sessions_ray_client_server(tmp_path):
    site = tmp_path / "site-packages"
    server = site / "ray" / "util" / "client" / "server"
    server.mkdir(parents=True)
    for package in (server, *list(server.parents)[:3]):
        (package / "__init__.py").touch()
    (server / "__main__.py").write_text(HOLDER)
    session, other = tmp_path / "session_1", tmp_path / "session_12"
    for directory in (session, other):
        (directory / "logs").mkdir(parents=True)

    client = _client_server(site, session / "logs" / "ray_client_server.out")
    other_client = _client_server(site, other / "logs" / "ray_client_server.out")
    try:
        assert reap(session, site / "ray", timeout=5) == []
        assert client.wait(5) == -9
        assert other_client.poll() is None, "another session's Ray Client server was ended"
    finally:
        for process in (client, other_client):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_released_reaper_reaps_nothing_and_a_named_starter_is_ended_first(tmp_path):
    ray_dir = tmp_path / "site-packages" / "ray"
    ray_dir.mkdir(parents=True)
    (ray_dir / "agent.py").write_text(HOLDER)
    starter_script = tmp_path / "starter.py"  # not Ray's: only its pid names it
    starter_script.write_text(HOLDER)
    session = tmp_path / "session_1"
    (session / "logs").mkdir(parents=True)
    agent = _hold(ray_dir / "agent.py", session / "logs" / "agent.log")
    starter = _hold(starter_script, tmp_path / "starter.log")
    watches = []
    try:
        for lines in ("release\n", f"pid {starter.pid}\n"):
            reaper = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.reaper", str(session), str(ray_dir)],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            watches.append(reaper)
            assert reaper.stdin is not None
            reaper.stdin.write(lines)
            reaper.stdin.flush()
            if lines == "release\n":  # a head started whole: the watch is over
                assert reaper.wait(15) == 0
                assert agent.poll() is None and starter.poll() is None
                continue
            reaper.stdin.close()  # the driver died mid-start
            assert reaper.wait(15) == 0, reaper.stderr.read() if reaper.stderr else ""
            assert starter.wait(5) == -9 and agent.wait(5) == -9
    finally:
        for process in (agent, starter, *watches):
            if process.poll() is None:
                process.kill()
                process.wait()
