"""Starts the real `llamaherd worker` as a separate process, the way an operator would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.netns import Host

LLAMAHERD = str(Path(sys.executable).parent / "llamaherd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    metrics_url: str = ""  # Prometheus endpoint; "" with --no-metrics

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_worker(
    workdir: Path,
    config: dict[str, Any] | None,
    *args: str,
    ready_timeout: float = 120.0,
    name: str = "worker",
    host: Host | None = None,
) -> WorkerProcess:
    """Runs `llamaherd worker` on a free loopback port, or on port 50051 of a namespaced
    `host` (tests.support.netns); returns once health says SERVING."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port() if host is None else 50051
    command = [LLAMAHERD, "worker", "--port", str(port), *args]
    if host is not None:
        command = [*host.exec_prefix(), *command, "--host", host.address]
    metrics_url = ""
    if host is not None:
        metrics_url = f"http://{host.address}:{port + 1000}/metrics"
    elif "--no-metrics" not in args and "--metrics-port" not in args:
        metrics_port = free_port()
        command += ["--metrics-port", str(metrics_port)]
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    if config is not None:
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command += ["--config", str(config_path)]
    log_path = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    address = f"{host.address if host else '127.0.0.1'}:{port}"
    worker = WorkerProcess(process, address, log_path, metrics_url)
    try:
        wait_serving(worker, ready_timeout)
    except BaseException:
        worker.stop()
        raise
    return worker


def wait_serving(worker: WorkerProcess, timeout: float) -> None:
    wait_health(worker.address, worker.process, worker.log_tail, "worker", timeout)


def wait_health(
    address: str,
    process: subprocess.Popen[bytes],
    log_tail: Callable[[], str],
    what: str,
    timeout: float,
) -> None:
    """Polls the gRPC health service at `address` until SERVING; fails at once, with the
    log, if the process exits first."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail()}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{what} not serving after {timeout} s:\n{log_tail()}")
