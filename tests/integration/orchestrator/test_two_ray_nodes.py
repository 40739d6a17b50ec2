"""The control plane on two Ray nodes: a second coordinator host joins with `ray start
--address ...`, gets its own gateway, routes like the first, and its loss leaves the first
serving.

Three "hosts" on a private bridge (support.netns): the root namespace runs the Ray head
(on the bridge address, started here with `ray start --head`, as an operator would) and
`llamaherd coordinator --ray-address` with `gateway_host: ray-node`; namespace `hosts[0]`
is the second coordinator host (only `ray start --address`); namespace `hosts[1]` runs
the worker. Ray's token authentication is on (RAY_AUTH_MODE=token with a token of this
test's own): a node without the token cannot join. Root only, as every namespace test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import inference_pb2_grpc
from support.cluster import TIMINGS, wait_for
from support.netns import Host, Network, network
from support.worker_process import LLAMAHERD, WorkerProcess, free_port, start_worker, wait_health

from orchestrator.reaper import reap

RAY = str(Path(sys.executable).parent / "ray")
_RAY_SPEC = importlib.util.find_spec("ray")  # where Ray's code is, without importing it
assert _RAY_SPEC is not None and _RAY_SPEC.origin is not None
RAY_PACKAGE = Path(_RAY_SPEC.origin).parent
ALIAS = "gemma"
CATALOG = [{"alias": ALIAS, "path": "builtin:gemma-3-270m", "n_ctx": 512, "n_threads": 1}]
PROMPT = "Once upon a time"
# The GCS declares a silent raylet dead after 3 missed checks 0.5 s apart (default: 5 x 3 s),
# so the loss is noticed in seconds and the test stays short.
HEAD_SYSTEM_CONFIG = (
    '{"health_check_period_ms": 500, "health_check_timeout_ms": 500, '
    '"health_check_failure_threshold": 3}'
)


@dataclass
class TwoNodes:
    net: Network
    second: Host  # the second coordinator host (a Ray node, no coordinator process)
    coordinator: subprocess.Popen[bytes]
    log_path: Path
    http_port: int
    grpc_port: int
    worker: WorkerProcess

    def gateway(self, address: str) -> str:
        return f"{address}:{self.grpc_port}"

    def base_url(self, address: str) -> str:
        return f"http://{address}:{self.http_port}/v1"

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _ray_env(token: str) -> dict[str, str]:
    return {
        **os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
    }  # fmt: skip


def _ray_start(prefix: list[str], env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`ray start ...` (it starts Ray's daemons and exits); wait for it with _started."""
    return subprocess.Popen(
        [*prefix, RAY, "start", "--disable-usage-stats", "--num-cpus", "0", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _started(ray_start: subprocess.Popen[str]) -> None:
    output, _ = ray_start.communicate(timeout=120)
    assert ray_start.returncode == 0, f"{ray_start.args} failed:\n{output}"


def _end_namespace(host: Host) -> None:
    """The host dies: every process in its namespace (its raylet, agents and actors; only
    this test's processes live there) is killed at once."""
    listed = subprocess.run(
        ["ip", "netns", "pids", host.name], capture_output=True, text=True, check=False
    )
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _reap_temp_dir(temp_dir: str) -> None:
    """Ends the Ray processes of the session under `temp_dir` (ours alone: `ray stop`
    would end every Ray on the machine), then removes the directory."""
    session = Path(temp_dir) / "session_latest"
    if session.exists():
        reap(session.resolve(), RAY_PACKAGE, why="the test ends its Ray")
    shutil.rmtree(temp_dir, ignore_errors=True)


def _status(gateway: str) -> inf_pb.ClusterStatusResponse:
    with grpc.insecure_channel(gateway) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        return stub.ClusterStatus(inf_pb.ClusterStatusRequest(), timeout=5)


def _ready_on(gateway: str) -> set[str]:
    """The nodes holding a ready replica of ALIAS, as `gateway` sees them."""
    return {
        node.status.node_id
        for node in _status(gateway).nodes
        if node.up and any(m.alias == ALIAS and m.state == 2 for m in node.status.models)
    }


def _complete(base_url: str, max_tokens: int = 8) -> str:
    reply = httpx.post(
        f"{base_url}/completions",
        json={"model": ALIAS, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    text: str = reply.json()["choices"][0]["text"]
    return text


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    workdir = tmp_path_factory.mktemp("two-ray-nodes")
    with network(2) as net:
        second, worker_host = net.hosts
        env = _ray_env(secrets.token_hex(32))
        # Short temp dirs: Ray's unix sockets live under them (108-byte path limit).
        head_dir = tempfile.mkdtemp(prefix="lh-rayhead-", dir="/tmp")
        node_dir = tempfile.mkdtemp(prefix="lh-raynode-", dir="/tmp")
        ray_port, http_port, grpc_port, registry_port = (free_port() for _ in range(4))
        config = workdir / "coordinator.yaml"
        config.write_text(yaml.safe_dump({"models": CATALOG}))
        log_path = workdir / "coordinator.log"
        coordinator: subprocess.Popen[bytes] | None = None
        worker: WorkerProcess | None = None
        try:
            head = _ray_start(
                [], env, "--head", "--node-ip-address", net.gateway, "--port", str(ray_port),
                "--include-dashboard=false", "--ray-client-server-port", str(free_port()),
                "--temp-dir", head_dir, "--system-config", HEAD_SYSTEM_CONFIG,
            )  # fmt: skip
            _started(head)
            command = [
                LLAMAHERD, "coordinator", "--config", str(config),
                "--ray-address", f"{net.gateway}:{ray_port}", "--host", net.gateway,
                "--gateway-host", "ray-node", "--registry-port", str(registry_port),
                "--http-port", str(http_port), "--grpc-port", str(grpc_port), *TIMINGS,
                "--store-port", str(free_port()), "--store-dir", str(workdir / "store"),
            ]  # fmt: skip
            coordinator_env = {
                **env, "LLAMAHERD_COORDINATOR_STATE_DIR": str(workdir / "coordinator-state")
            }  # fmt: skip
            with log_path.open("ab") as log:
                coordinator = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=coordinator_env,
                    start_new_session=True,
                )  # fmt: skip
            first = f"{net.gateway}:{grpc_port}"
            wait_health(first, coordinator, lambda: log_path.read_text(), "coordinator", 120)
            # The second host joins while the worker starts (both take seconds).
            joining = _ray_start(
                second.exec_prefix(), env, "--address", f"{net.gateway}:{ray_port}",
                "--node-ip-address", second.address, "--temp-dir", node_dir,
            )  # fmt: skip
            worker = start_worker(
                workdir, None, "--coordinator", f"{net.gateway}:{registry_port}",
                "--node-id", "worker-1", "--heartbeat-interval-s", "0.5",
                name="worker-1", host=worker_host,
            )  # fmt: skip
            _started(joining)
            yield TwoNodes(net, second, coordinator, log_path, http_port, grpc_port, worker)
        finally:
            if worker is not None:
                worker.stop()
            if coordinator is not None and coordinator.poll() is None:
                coordinator.send_signal(signal.SIGTERM)
                try:
                    coordinator.wait(60)
                except subprocess.TimeoutExpired:
                    coordinator.kill()
                    coordinator.wait()
            _end_namespace(second)
            for temp_dir in (node_dir, head_dir):
                _reap_temp_dir(temp_dir)


def test_the_second_node_gets_a_gateway_that_routes_like_the_first(two_nodes: TwoNodes) -> None:
    first = two_nodes.net.gateway
    second = two_nodes.second.address
    # The coordinator's supervisor starts it within a round (5 s) of the node joining, on
    # the second host's own address (gateway_host: ray-node).
    wait_health(
        two_nodes.gateway(second), two_nodes.coordinator, two_nodes.log_tail,
        "the second node's gateway", 60,
    )  # fmt: skip
    for gateway in (two_nodes.gateway(first), two_nodes.gateway(second)):
        wait_for(lambda g=gateway: _ready_on(g) == {"worker-1"}, 90, f"{gateway} to see the model")
    statuses = [_status(two_nodes.gateway(a)) for a in (first, second)]
    assert statuses[0].routing_policy == statuses[1].routing_policy != ""
    assert [n.status.node_id for n in statuses[0].nodes] == ["worker-1"]
    assert [n.status.node_id for n in statuses[1].nodes] == ["worker-1"]
    # Each gateway relays to the worker (in a third namespace); greedy: the same text.
    texts = [_complete(two_nodes.base_url(a)) for a in (first, second)]
    assert texts[0] and texts[0] == texts[1]


def test_losing_the_second_node_leaves_the_first_serving(two_nodes: TwoNodes) -> None:
    first = two_nodes.base_url(two_nodes.net.gateway)
    wait_health(
        two_nodes.gateway(two_nodes.second.address), two_nodes.coordinator, two_nodes.log_tail,
        "the second node's gateway", 60,
    )  # fmt: skip
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                _complete(first, max_tokens=2)
                served += 1
            except (AssertionError, httpx.HTTPError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    client = threading.Thread(target=traffic, daemon=True)
    client.start()
    try:
        _end_namespace(two_nodes.second)
        dropped = wait_for(
            lambda: "left; its gateways are gone" in two_nodes.log_tail(500), 45,
            "the coordinator to drop the lost node's gateway",
        )  # fmt: skip
        assert dropped
        noticed = served
        time.sleep(2.0)  # serving goes on after the loss is handled
    finally:
        stop.set()
        client.join(timeout=90)
    assert not failures, failures
    assert served > noticed > 0
    assert two_nodes.coordinator.poll() is None, two_nodes.log_tail()
    # The first gateway still routes to the worker, and no gateway came back for the lost
    # node (its processes are gone; the supervisor must not restart it elsewhere).
    assert _ready_on(two_nodes.gateway(two_nodes.net.gateway)) == {"worker-1"}
    assert (
        "gateway started on Ray node"
        not in two_nodes.log_tail(500).split("left; its gateways are gone")[-1]
    )
