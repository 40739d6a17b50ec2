"""A split model served through the normal gateway, planned and re-planned by the coordinator.

The coordinator runs in the root namespace (registry on the bridge, gateways on loopback);
three workers run in their own network namespaces. The catalog asks for the Gemma model
over two nodes: the coordinator picks a head and a helper, lends the helper's device to the
head and loads the model there. A client of the OpenAI API gets the single-node output;
when the helper is killed the coordinator re-plans onto the two nodes left.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import worker_pb2 as w_pb
from llamaherd.v1 import worker_pb2_grpc
from support.auth import worker_channel
from support.cluster import Coordinator, start_coordinator, wait_for
from support.netns import Network, network
from support.rpc import generate
from support.worker_process import LLAMAHERD, WorkerProcess, start_worker

ALIAS = "gemma-split"
MODEL = {"path": "builtin:gemma-3-270m", "n_ctx": 1024, "n_parallel": 1, "flash_attn": "off"}
PROMPT = "The three largest cities of Europe are"
TOKENS = 32


@dataclass
class SplitCluster:
    net: Network
    coordinator: Coordinator
    workers: dict[str, WorkerProcess]


@pytest.fixture(scope="module")
def split_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitCluster]:
    workdir = tmp_path_factory.mktemp("split-cluster")
    with network(3) as net:
        coordinator = start_coordinator(
            workdir, [{"alias": ALIAS, "split_nodes": 2, **MODEL}], "--host", net.gateway
        )
        workers: dict[str, WorkerProcess] = {}
        try:
            for i, host in enumerate(net.hosts):
                node_id = f"host{i}"
                workers[node_id] = start_worker(
                    workdir, None,
                    "--coordinator", f"{net.gateway}:{coordinator.registry_port}",
                    "--node-id", node_id, "--heartbeat-interval-s", "0.5",
                    name=node_id, host=host,
                )  # fmt: skip
            yield SplitCluster(net, coordinator, workers)
        finally:
            for worker in workers.values():
                worker.stop()
            coordinator.stop()


def split_layout(coordinator: Coordinator) -> tuple[str, list[str]] | None:
    """(head node, helper nodes) of the ready split, as the gateway reports it."""
    status = coordinator.status()
    lenders = {
        lease.endpoint: n.status.node_id for n in status.nodes for lease in n.status.rpc_servers
    }
    for node in status.nodes:
        for load in node.status.models:
            ready = load.state == w_pb.MODEL_STATE_READY
            if node.up and load.alias == ALIAS and ready and load.spec.rpc_servers:
                return node.status.node_id, [lenders.get(e, e) for e in load.spec.rpc_servers]
    return None


def complete(coordinator: Coordinator) -> str:
    reply = httpx.post(
        f"{coordinator.base_url}/completions",
        json={"model": ALIAS, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    text: str = reply.json()["choices"][0]["text"]
    return text


def single_node_text(cluster: SplitCluster, node_id: str) -> str:
    """The same request on a fresh single-node copy loaded on `node_id` by hand (the
    coordinator leaves models outside its catalog alone)."""
    with worker_channel(cluster.workers[node_id].address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        spec = w_pb.ModelSpec(alias="gemma-reference", **MODEL)
        stub.LoadModel(w_pb.LoadModelRequest(spec=spec), timeout=120)
        try:
            return generate(stub, "gemma-reference", PROMPT, temperature=0, max_tokens=TOKENS).text
        finally:
            stub.UnloadModel(w_pb.UnloadModelRequest(alias="gemma-reference"), timeout=60)


def test_the_gateway_serves_the_split_with_the_single_node_output(
    split_cluster: SplitCluster,
) -> None:
    layout = wait_for(
        lambda: split_layout(split_cluster.coordinator), 180, "the split to be served"
    )
    head, helpers = layout
    assert len(helpers) == 1 and helpers[0] != head
    text = complete(split_cluster.coordinator)
    assert text
    assert text == single_node_text(split_cluster, head)

    shown = subprocess.run(
        [LLAMAHERD, "status", "--gateway", split_cluster.coordinator.gateway],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"{ALIAS} split: layers 0-" in shown.stdout
    assert f"on {helpers[0]}" in shown.stdout
    assert f"lends CPU to {ALIAS}@{head}" in shown.stdout


def test_a_killed_helper_fails_fast_and_the_split_is_replanned(split_cluster: SplitCluster) -> None:
    _, (helper,) = wait_for(lambda: split_layout(split_cluster.coordinator), 180, "the split")
    split_cluster.workers[helper].process.send_signal(signal.SIGKILL)

    def failed_fast() -> bool:
        reply = httpx.post(
            f"{split_cluster.coordinator.base_url}/completions",
            json={"model": ALIAS, "prompt": PROMPT, "max_tokens": 4},
            timeout=30,
        )
        # 503 while no replica serves; never a hang (the timeout above would fail it).
        return reply.status_code == 503

    wait_for(failed_fast, 30, "requests to fail fast once the helper is gone")
    layout = wait_for(
        lambda: (
            (found := split_layout(split_cluster.coordinator))
            and helper not in (found[0], *found[1])
            and found
        ),
        120,
        "the split to be re-planned onto the remaining nodes",
    )
    remaining = {layout[0], *layout[1]}
    assert remaining == set(split_cluster.workers) - {helper}
    assert complete(split_cluster.coordinator) == single_node_text(split_cluster, layout[0])
    status: inf_pb.ClusterStatusResponse = split_cluster.coordinator.status()
    assert not any(p.alias == ALIAS for p in status.placement_problems)
