"""A Ray cluster of several "hosts" (support.netns), started the way an operator does:
`ray start --head` on the bridge address in the root namespace, `ray start --address ...`
inside a namespace, Ray's token authentication on with a token of the caller's own.

Every Ray here keeps its files under a short temporary directory of its own, so that its
processes can be ended by that directory (orchestrator.reaper) and by namespace, never by
name: `ray stop` would end every Ray on the machine, other people's included.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from support.cluster import TIMINGS
from support.netns import Host
from support.worker_process import LLAMAHERD, free_port, wait_health

from orchestrator.reaper import reap

RAY = str(Path(sys.executable).parent / "ray")
_RAY_SPEC = importlib.util.find_spec("ray")  # where Ray's code is, without importing it
assert _RAY_SPEC is not None and _RAY_SPEC.origin is not None
RAY_PACKAGE = Path(_RAY_SPEC.origin).parent
# The GCS declares a silent raylet dead after 3 missed checks 0.5 s apart (default: 5 x 3 s),
# so a lost node is noticed in seconds.
FAST_FAILURE_DETECTION = (
    '{"health_check_period_ms": 500, "health_check_timeout_ms": 500, '
    '"health_check_failure_threshold": 3}'
)


def ray_env(token: str) -> dict[str, str]:
    """The environment of every process of the cluster (Ray's and the coordinator's):
    token authentication with `token`."""
    return {
        **os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
    }  # fmt: skip


def ray_temp_dir(role: str) -> str:
    """A short directory for one node's Ray files (its unix sockets live under it, and a
    socket path has 108 bytes at most)."""
    return tempfile.mkdtemp(prefix=f"lh-ray{role}-", dir="/tmp")


# `ray start` processes not yet waited for, by their --temp-dir: end_ray ends one still
# starting before it ends the daemons it started, or it would go on starting more.
_starting: dict[str, list[subprocess.Popen[str]]] = {}


def ray_start(prefix: list[str], env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`ray start ...` (it starts Ray's daemons and exits); wait for it with `started`.
    No CPUs: the control plane's actors take none, and nothing else may run there."""
    process = subprocess.Popen(
        [*prefix, RAY, "start", "--disable-usage-stats", "--num-cpus", "0", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if "--temp-dir" in args:
        temp_dir = args[args.index("--temp-dir") + 1]
        _starting.setdefault(temp_dir, []).append(process)
    return process


def started(process: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Waits for `ray start`; one that fails, hangs or is interrupted is killed (end_ray
    then ends what it had started)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except BaseException:
        _kill(process)
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} failed:\n{output}")


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.communicate(timeout=10)


def start_head(address: str, temp_dir: str, env: dict[str, str]) -> str:
    """A Ray head on `address` (the bridge's root-namespace address), no dashboard, its
    Ray Client server on a free port, lost nodes noticed within seconds; returns the
    address:port nodes and drivers join."""
    port = free_port()
    head = ray_start(
        [], env, "--head", "--node-ip-address", address, "--port", str(port),
        "--include-dashboard=false", "--ray-client-server-port", str(free_port()),
        "--temp-dir", temp_dir, "--system-config", FAST_FAILURE_DETECTION,
    )  # fmt: skip
    started(head)
    return f"{address}:{port}"


def join(host: Host, head: str, temp_dir: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`host` joins the cluster of `head` (address:port) as a second Ray node."""
    return ray_start(
        host.exec_prefix(), env, "--address", head, "--node-ip-address", host.address,
        "--temp-dir", temp_dir,
    )  # fmt: skip


def end_namespace(host: Host) -> None:
    """The host dies: every process in its namespace (only the caller's processes live
    there) is killed at once."""
    listed = subprocess.run(
        ["ip", "netns", "pids", host.name], capture_output=True, text=True, check=False
    )
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def end_ray(temp_dir: str) -> None:
    """Ends the Ray processes under `temp_dir` (a `ray start` still starting first, then
    every daemon with a file or an argument there: one whose start failed or was
    interrupted has no session_latest link yet), then removes it."""
    for process in _starting.pop(temp_dir, []):
        _kill(process)
    left = reap(Path(temp_dir), RAY_PACKAGE, why="the test ends its Ray")
    # The head's Ray Client server (`python -m ray.util.client.server`) names neither the
    # directory nor a file of Ray's package, so the reaper passes it over; it writes its
    # logs there.
    clients = [p for p in _ray_modules() if _has_open_under(p, temp_dir)]
    for process in clients:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, alive = psutil.wait_procs(clients, timeout=10)
    if left or alive:
        raise RuntimeError(f"Ray processes under {temp_dir} survived SIGKILL: {left + alive}")
    shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_modules() -> list[psutil.Process]:
    """The processes running one of Ray's modules (`python -m ray.<...>`)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if any(a == "-m" and b.startswith("ray.") for a, b in itertools.pairwise(command)):
                found.append(process)
    return found


def _has_open_under(process: psutil.Process, directory: str) -> bool:
    prefix = str(Path(directory).resolve()) + os.sep
    try:
        return any(f.path.startswith(prefix) for f in process.open_files())
    except psutil.Error:
        return False


@dataclass
class RayCoordinator:
    """`llamaherd coordinator` on a Ray cluster it joined (--ray-address), its registry on
    `host` and a gateway on every Ray node's own address (gateway_host: ray-node)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    host: str
    registry_port: int
    http_port: int
    grpc_port: int

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def gateway(self, address: str) -> str:
        """The gRPC gateway of the Ray node at `address`."""
        return f"{address}:{self.grpc_port}"

    def base_url(self, address: str) -> str:
        """The OpenAI API of the gateway of the Ray node at `address`."""
        return f"http://{address}:{self.http_port}/v1"

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_coordinator(
    workdir: Path, catalog: list[dict[str, Any]], head: str, host: str, env: dict[str, str],
    *args: str,
) -> RayCoordinator:  # fmt: skip
    """Runs `llamaherd coordinator --ray-address head` (the cluster's token in `env`) with
    its registry on `host`; returns once the gateway on `host` serves."""
    config = workdir / "coordinator.yaml"
    config.write_text(yaml.safe_dump({"models": catalog}))
    registry_port, http_port, grpc_port = free_port(), free_port(), free_port()
    command = [
        LLAMAHERD, "coordinator", "--config", str(config), "--ray-address", head,
        "--host", host, "--gateway-host", "ray-node", "--registry-port", str(registry_port),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *TIMINGS,
        "--store-port", str(free_port()), "--store-dir", str(workdir / "store"), *args,
    ]  # fmt: skip
    environ = {**env, "LLAMAHERD_COORDINATOR_STATE_DIR": str(workdir / "coordinator-state")}
    log_path = workdir / "coordinator.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environ, start_new_session=True
        )
    coordinator = RayCoordinator(process, log_path, host, registry_port, http_port, grpc_port)
    try:
        wait_health(coordinator.gateway(host), process, coordinator.log_tail, "coordinator", 120)
    except BaseException:
        coordinator.stop()
        raise
    return coordinator
