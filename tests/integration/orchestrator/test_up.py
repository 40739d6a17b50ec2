"""`llamaherd up`, the main job, as a user runs it: a whole local cluster from one command.

Also what it exposes (every listener of every process it starts is on loopback, Ray's
included; Ray's token file is private) and what a killed `up` leaves behind (nothing).
"""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
from support.processes import describe, listeners, process_tree, still_running, wait_gone
from support.worker_process import LLAMAHERD, free_port

READY = "press Ctrl-C to stop"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
# Issue 14 asks that a dead `up` leave nothing behind within this bound.
GONE_WITHIN_S = 15.0


class _Output:
    """Collects a child's output lines on a thread, so waiting for a line never misses
    lines already read into the pipe's buffer."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read_until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if marker in line:
                return "".join(self.seen)
        raise AssertionError(f"{marker!r} not printed within {timeout} s:\n{''.join(self.seen)}")


def _start_up(ports: tuple[int, int, int], workers: int, log_dir: Path) -> subprocess.Popen[str]:
    http, grpc_port, registry = ports
    command = [
        LLAMAHERD, "up", "--workers", str(workers), "--http-port", str(http),
        "--grpc-port", str(grpc_port), "--registry-port", str(registry),
        "--store-port", str(free_port()), "--store-dir", str(log_dir / "store"),
        "--log-dir", str(log_dir), "--cluster-token-file", str(log_dir / "cluster-token"),
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
        start_new_session=True,
    )  # fmt: skip


def _assert_loopback_only(pid: int) -> None:
    """Every listening socket of every process `pid` started is on loopback (finding 6)."""
    tree = process_tree(pid)
    found = listeners(tree)
    exposed = [str(listener) for listener in found if not listener.loopback]
    assert not exposed, "listening beyond loopback:\n  " + "\n  ".join(exposed)
    # Not vacuous: the gateway's two ports, the registry and Ray's own are among them.
    assert len(found) >= 5, describe(tree)


def _assert_ray_token_private() -> None:
    """Ray's token file, which any local process could use to drive the cluster, is 0600."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # the operator's own token: not ours to create
    path = Path.home() / ".ray" / "auth_token"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o077 == 0, f"{path} is mode {mode:o}: other users can read it"


def test_up_serves_a_streamed_chat_and_stops_cleanly_on_ctrl_c(tmp_path):
    http, grpc_port, _ = ports = free_port(), free_port(), free_port()
    process = _start_up(ports, 2, tmp_path)
    children: list[psutil.Process] = []
    try:
        output = _Output(process).read_until(READY, 240)
        assert f"http://127.0.0.1:{http}/v1" in output
        assert "workers join with:" in output
        assert "models ready: gemma-3-270m 2/2" in output

        status = subprocess.run(
            [LLAMAHERD, "status", "--gateway", f"127.0.0.1:{grpc_port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "2 workers (2 up)" in status.stdout
        assert "worker-1" in status.stdout and "worker-2" in status.stdout

        body = {
            "model": "gemma-3-270m",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream(
            "POST", f"http://127.0.0.1:{http}/v1/chat/completions", json=body, timeout=60
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 3

        chat = subprocess.run(
            [LLAMAHERD, "chat", "--gateway", f"127.0.0.1:{grpc_port}", "--max-tokens", "8",
             "--temperature", "0", "Hello"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip() and "8 tokens" in chat.stderr

        # Every actor and agent is up by now: nothing of the cluster listens beyond loopback.
        _assert_loopback_only(process.pid)
        _assert_ray_token_private()
        children = psutil.Process(process.pid).children(recursive=True)

        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Nothing it started outlives it: workers, Ray and the actors are gone.
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [p.cmdline()[:3] for p in alive]
    # up made the cluster's join token, private, and it is in no line that up printed (the
    # coordinator's actors log through it) nor in its workers' logs.
    token = ENV.get("LLAMAHERD_CLUSTER_TOKEN")
    if token is None:  # as a user runs it: up generates the token into the file
        token_file = tmp_path / "cluster-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
    logs = [path.read_text(errors="replace") for path in tmp_path.glob("*.log")]
    assert len(logs) == 2 and all("registered with coordinator" in log for log in logs)
    assert not any(token in text for text in [output, *logs])


def test_a_killed_up_leaves_nothing_behind_and_a_new_one_starts_on_its_ports(tmp_path):
    """Finding 5: `kill -9` of `up` left its workers retrying forever and Ray's agents
    running (one of them listening). Now everything it started ends with it, within
    GONE_WITHIN_S, and the next `up` gets the same ports."""
    ports = free_port(), free_port(), free_port()
    first = _start_up(ports, 1, tmp_path / "first")
    second: subprocess.Popen[str] | None = None
    try:
        _Output(first).read_until(READY, 240)
        started = process_tree(first.pid)[1:]
        names = " ".join(p.name() for p in started)
        assert "raylet" in names and "gcs_server" in names, describe(started)

        first.kill()
        killed_at = time.monotonic()
        first.wait()
        left = wait_gone(started, GONE_WITHIN_S)
        assert not left, f"still running {GONE_WITHIN_S} s after kill -9 of up:\n{describe(left)}"
        print(f"everything `up` started ended {time.monotonic() - killed_at:.1f} s after kill -9")

        second = _start_up(ports, 1, tmp_path / "second")
        output = _Output(second).read_until(READY, 240)
        assert "models ready: gemma-3-270m 1/1" in output
        health = httpx.get(f"http://127.0.0.1:{ports[0]}/v1/models", timeout=10)
        assert health.status_code == 200 and "gemma-3-270m" in health.text
        children = process_tree(second.pid)[1:]
        second.send_signal(signal.SIGINT)
        assert second.wait(60) == 0
        assert not wait_gone(children, 20), describe(still_running(children))
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
