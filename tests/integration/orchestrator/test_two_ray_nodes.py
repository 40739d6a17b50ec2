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

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import inference_pb2_grpc
from support.cluster import wait_for
from support.netns import Host, Network, network
from support.ray_nodes import (
    RayCoordinator,
    end_namespace,
    end_ray,
    join,
    ray_env,
    ray_temp_dir,
    start_coordinator,
    start_head,
    started,
)
from support.worker_process import WorkerProcess, start_worker, wait_health

ALIAS = "gemma"
CATALOG = [{"alias": ALIAS, "path": "builtin:gemma-3-270m", "n_ctx": 512, "n_threads": 1}]
PROMPT = "Once upon a time"


@dataclass
class TwoNodes:
    net: Network
    second: Host  # the second coordinator host (a Ray node, no coordinator process)
    coordinator: RayCoordinator
    worker: WorkerProcess


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


def _wait_second_gateway(two_nodes: TwoNodes) -> None:
    """The coordinator's supervisor starts it within a round (5 s) of the node joining, on
    the second host's own address (gateway_host: ray-node)."""
    coordinator = two_nodes.coordinator
    wait_health(
        coordinator.gateway(two_nodes.second.address), coordinator.process,
        coordinator.log_tail, "the second node's gateway", 60,
    )  # fmt: skip


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
        env = ray_env(secrets.token_hex(32))
        head_dir, node_dir = ray_temp_dir("head"), ray_temp_dir("node")
        coordinator: RayCoordinator | None = None
        worker: WorkerProcess | None = None
        try:
            head = start_head(net.gateway, head_dir, env)
            coordinator = start_coordinator(workdir, CATALOG, head, net.gateway, env)
            # The second host joins while the worker starts (both take seconds).
            joining = join(second, head, node_dir, env)
            worker = start_worker(
                workdir, None, "--coordinator", f"{net.gateway}:{coordinator.registry_port}",
                "--node-id", "worker-1", "--heartbeat-interval-s", "0.5",
                name="worker-1", host=worker_host,
            )  # fmt: skip
            started(joining)
            yield TwoNodes(net, second, coordinator, worker)
        finally:
            if worker is not None:
                worker.stop()
            if coordinator is not None:
                coordinator.stop()
            end_namespace(second)
            for temp_dir in (node_dir, head_dir):
                end_ray(temp_dir)


def test_the_second_node_gets_a_gateway_that_routes_like_the_first(two_nodes: TwoNodes) -> None:
    first = two_nodes.net.gateway
    second = two_nodes.second.address
    _wait_second_gateway(two_nodes)
    for gateway in (two_nodes.coordinator.gateway(first), two_nodes.coordinator.gateway(second)):
        wait_for(lambda g=gateway: _ready_on(g) == {"worker-1"}, 90, f"{gateway} to see the model")
    statuses = [_status(two_nodes.coordinator.gateway(a)) for a in (first, second)]
    assert statuses[0].routing_policy == statuses[1].routing_policy != ""
    assert [n.status.node_id for n in statuses[0].nodes] == ["worker-1"]
    assert [n.status.node_id for n in statuses[1].nodes] == ["worker-1"]
    # Each gateway relays to the worker (in a third namespace); greedy: the same text.
    texts = [_complete(two_nodes.coordinator.base_url(a)) for a in (first, second)]
    assert texts[0] and texts[0] == texts[1]


def test_losing_the_second_node_leaves_the_first_serving(two_nodes: TwoNodes) -> None:
    first = two_nodes.coordinator.base_url(two_nodes.net.gateway)
    _wait_second_gateway(two_nodes)
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
        end_namespace(two_nodes.second)
        dropped = wait_for(
            lambda: "left; its gateways are gone" in two_nodes.coordinator.log_tail(500), 45,
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
    assert two_nodes.coordinator.process.poll() is None, two_nodes.coordinator.log_tail()
    # The first gateway still routes to the worker, and no gateway came back for the lost
    # node (its processes are gone; the supervisor must not restart it elsewhere).
    assert _ready_on(two_nodes.coordinator.gateway(two_nodes.net.gateway)) == {"worker-1"}
    assert (
        "gateway started on Ray node"
        not in two_nodes.coordinator.log_tail(500).split("left; its gateways are gone")[-1]
    )
