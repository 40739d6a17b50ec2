"""`llamaherd up` as a user runs it, for the browser tests: a whole local cluster on free
loopback ports, its output in a log file, stopped with Ctrl-C (SIGINT) as a user stops it.

The API key, when there is one, reaches `up` and `llamaherd status` through their environment,
never their command line (a process listing or a log would show it there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.worker_process import LLAMAHERD, free_port

READY = "press Ctrl-C to stop"
# Fast failure detection: a SIGKILLed worker must show as down within 3 s on the page.
TIMINGS = ["--down-after-s", "2", "--placement-interval-s", "0.5"]
KEY_ENV = "LLAMAHERD_COORDINATOR_API_KEY"  # what `up` reads its API key from
CLIENT_KEY_ENV = "LLAMAHERD_API_KEY"  # what `llamaherd status` sends


@dataclass
class UpCluster:
    process: subprocess.Popen[bytes]
    workdir: Path
    http_port: int
    grpc_port: int
    registry_port: int
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dashboard(self) -> str:
        return f"{self.url}/dashboard/"

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def token_file(self) -> Path:
        return self.workdir / "cluster-token"

    @property
    def log_path(self) -> Path:
        return self.workdir / "up.log"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def status_json(self) -> dict[str, Any]:
        """`llamaherd status --json` against this cluster's gateway (the key, if any, from
        the environment)."""
        env = {k: v for k, v in os.environ.items() if k != CLIENT_KEY_ENV}
        if self.api_key is not None:
            env[CLIENT_KEY_ENV] = self.api_key
        run = subprocess.run(
            [LLAMAHERD, "status", "--gateway", self.gateway, "--json"],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        document: dict[str, Any] = json.loads(run.stdout)
        return document

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C; a kill of the whole session if it does not end within `timeout`."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_up(
    workdir: Path, workers: int, *args: str, api_key: str | None = None, timeout: float = 240.0
) -> UpCluster:
    """Runs `llamaherd up --workers N` on free ports; returns once it printed that the
    catalog is placed (READY)."""
    workdir.mkdir(parents=True, exist_ok=True)
    http, grpc_port, registry = free_port(), free_port(), free_port()
    command = [
        LLAMAHERD, "up", "--workers", str(workers), "--http-port", str(http),
        "--grpc-port", str(grpc_port), "--registry-port", str(registry),
        "--store-port", str(free_port()), "--store-dir", str(workdir / "store"),
        "--log-dir", str(workdir), "--cluster-token-file", str(workdir / "cluster-token"),
        *TIMINGS, *args,
    ]  # fmt: skip
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
        "LLAMAHERD_COORDINATOR_STATE_DIR": str(workdir / "coordinator-state"),
    }  # fmt: skip
    env.pop(KEY_ENV, None)
    env.pop("LLAMAHERD_CLUSTER_TOKEN", None)  # up makes its own, into the token file
    if api_key is not None:
        env[KEY_ENV] = api_key
    with (workdir / "up.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    cluster = UpCluster(process, workdir, http, grpc_port, registry, api_key)
    deadline = time.monotonic() + timeout
    try:
        while READY not in cluster.output():
            if not cluster.alive():
                raise RuntimeError(f"llamaherd up exited:\n{cluster.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{READY!r} not printed within {timeout} s:\n{cluster.output()}")
            time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster
