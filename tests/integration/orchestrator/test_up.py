"""`llamaherd up`, the main job, as a user runs it: a whole local cluster from one command."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time

import httpx
import psutil
from support.worker_process import LLAMAHERD, free_port


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


def test_up_serves_a_streamed_chat_and_stops_cleanly_on_ctrl_c(tmp_path):
    http, grpc_port, registry = free_port(), free_port(), free_port()
    command = [
        LLAMAHERD, "up", "--workers", "2", "--http-port", str(http),
        "--grpc-port", str(grpc_port), "--registry-port", str(registry),
        "--log-dir", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        output = _Output(process).read_until("press Ctrl-C to stop", 240)
        assert f"http://127.0.0.1:{http}/v1" in output
        assert "models ready: gemma-3-270m 2/2" in output
        children = psutil.Process(process.pid).children(recursive=True)

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

        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Nothing it started outlives it: workers, Ray and the actors are gone.
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [p.cmdline()[:3] for p in alive]
