"""Starts the real `llamaherd coordinator` (its own local Ray, registry, placement and
gateway) and real workers that register with it, each a separate process on loopback."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import inference_pb2_grpc
from support.leftovers import MARK_ENV, end_marked, new_mark, submark
from support.worker_process import LLAMAHERD, WorkerProcess, free_port, start_worker, wait_health

T = TypeVar("T")

# Fast failure detection keeps the fault tests short; the defaults are 1 s and 3 s.
TIMINGS = ["--heartbeat-interval-s", "0.5", "--down-after-s", "2", "--placement-interval-s", "0.5"]


@dataclass
class Coordinator:
    process: subprocess.Popen[bytes]
    log_path: Path
    registry_port: int
    http_port: int
    grpc_port: int
    args: list[str] = field(default_factory=list)
    # In the environment of it and of all it starts (support.leftovers), its detached Ray
    # head included: the same for every coordinator of one workdir (a restart adopts).
    mark: str = ""

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends `sig` (SIGKILL leaves its Ray head serving, for a successor to adopt).
        One that does not stop in time is killed with everything it started."""
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.end_leftovers()
        return self.process.returncode

    def end_leftovers(self) -> None:
        """Kills every process it (or a coordinator before it in its workdir) started and
        left: its Ray head's GCS, raylet, actors and agents, even those of a head whose
        start was cut short before it was recorded anywhere."""
        if self.mark:
            end_marked(self.mark, exclude=frozenset({os.getpid()}))

    def ports(self) -> tuple[int, int, int]:
        return (self.registry_port, self.http_port, self.grpc_port)

    def wait_ports_closed(self, timeout: float = 30.0) -> None:
        """After a kill: waits until nothing of it (its Ray actors live in other processes)
        still accepts connections, so a successor really starts from nothing."""
        wait_for(
            lambda: not any(_accepts(port) for port in self.ports()),
            timeout,
            f"the ports {self.ports()} of the killed coordinator to close",
        )

    def status(self) -> inf_pb.ClusterStatusResponse:
        with grpc.insecure_channel(self.gateway) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            return stub.ClusterStatus(inf_pb.ClusterStatusRequest(), timeout=5)


def _store_port(workdir: Path) -> int:
    """A free port for the model store, the same for every coordinator of one workdir (a
    restarted coordinator adopts the store actor only if its settings are the same)."""
    record = workdir / "store-port"
    if not record.exists():
        record.write_text(str(free_port()))
    return int(record.read_text())


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_coordinator(
    workdir: Path,
    catalog: list[dict[str, Any]],
    *args: str,
    ports: tuple[int, int, int] | None = None,
    ready_timeout: float = 120.0,
    name: str = "coordinator",
    env: dict[str, str] | None = None,
) -> Coordinator:
    """Runs `llamaherd coordinator` on free loopback ports; returns once its gateway serves."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"models": catalog}))
    registry, http, grpc_port = ports or (free_port(), free_port(), free_port())
    command = [
        LLAMAHERD, "coordinator", "--config", str(config), "--registry-port", str(registry),
        "--http-port", str(http), "--grpc-port", str(grpc_port), *TIMINGS,
        # Its own model store: a free port (several coordinators may run at once) and a
        # directory of its own; a test's own --store-* in args comes later and wins.
        "--store-port", str(_store_port(workdir)), "--store-dir", str(workdir / "store"), *args,
    ]  # fmt: skip
    log_path = workdir / f"{name}.log"
    mark = _coordinator_mark(workdir)
    environ = {
        **os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
        # Its Ray head's record: a restart in the same workdir adopts what a killed one left.
        "LLAMAHERD_COORDINATOR_STATE_DIR": str(workdir / "coordinator-state"), **(env or {}),
        MARK_ENV: mark,
    }  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environ, start_new_session=True
        )
    coordinator = Coordinator(process, log_path, registry, http, grpc_port, list(args), mark)
    try:
        wait_health(
            coordinator.gateway, process, coordinator.log_tail, "coordinator", ready_timeout
        )
        # A gateway its killed predecessor left may be what answered: this one is up once
        # it has printed its endpoints (after starting or adopting the control plane).
        wait_for(lambda: _printed_endpoints(coordinator), ready_timeout, f"{name}'s endpoints")
    except BaseException:
        coordinator.stop()  # a clean stop: a killed one would leave its Ray head running
        # A start cut short (a failure, a timeout, Ctrl-C) may have left a Ray head that
        # nothing recorded: its GCS outlives its starter (support.leftovers).
        coordinator.end_leftovers()
        raise
    return coordinator


def _coordinator_mark(workdir: Path) -> str:
    """The mark of the coordinators of `workdir`, inside this test run's own."""
    run = os.environ.get(MARK_ENV) or new_mark("cluster")
    return submark(run, "coordinator-" + hashlib.sha1(str(workdir).encode()).hexdigest()[:12])


def _printed_endpoints(coordinator: Coordinator) -> bool:
    if not coordinator.alive():
        raise RuntimeError(f"coordinator exited:\n{coordinator.log_tail()}")
    return "OpenAI-compatible API:" in coordinator.log_tail(lines=500)


def start_node(
    workdir: Path,
    coordinator: Coordinator,
    node_id: str,
    *args: str,
    config: dict[str, Any] | None = None,
) -> WorkerProcess:
    """A worker that registers with `coordinator` as `node_id`."""
    return start_worker(
        workdir, config, "--coordinator", coordinator.registry, "--node-id", node_id,
        "--heartbeat-interval-s", "0.5", *args, name=node_id,
    )  # fmt: skip


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Polls `check` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except grpc.RpcError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def ready_replicas(coordinator: Coordinator) -> dict[str, set[str]]:
    """Nodes holding a ready replica, by alias, as the gateway sees them."""
    found: dict[str, set[str]] = {}
    for node in coordinator.status().nodes:
        if not node.up:
            continue
        for load in node.status.models:
            if load.state == 2:  # MODEL_STATE_READY
                found.setdefault(load.alias, set()).add(node.status.node_id)
    return found
