"""Forged workers against the real coordinator: without the join token nothing registers;
with it (a cluster member), another node's id stays its own. The cluster and its workers
run with the test run's token (tests/integration/conftest.py)."""

from __future__ import annotations

import time

import grpc
import pytest
from llamaherd.v1 import cluster_pb2_grpc
from support.auth import token_metadata
from support.cluster import ready_replicas
from support.models import GEMMA

from common.cluster_auth import NODE_KEY_KEY, REFUSAL
from common.hardware import HardwareInfo
from common.model_settings import ModelConfig
from common.status import EngineFigures, ModelState, ModelStatus, NodeStatus
from common.wire.status import node_status_to_report


def _forged_report(node_id: str, address: str):
    """A node claiming the cluster's model READY and fast: what would take over routing."""
    model = ModelStatus(
        GEMMA, ModelConfig(alias=GEMMA, path="builtin:gemma-3-270m"), ModelState.READY,
        engine=EngineFigures(slots_total=4, decode_tps=10_000.0),
    )  # fmt: skip
    status = NodeStatus(node_id, address, HardwareInfo("x86-cuda"), models=(model,))
    return node_status_to_report(status, 0)


def _register(registry: str, metadata, report) -> grpc.RpcError:
    with grpc.insecure_channel(registry) as channel:
        stub = cluster_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Heartbeat(iter([report]), metadata=metadata, timeout=5))
    return refused.value


def _view(cluster) -> set[tuple[str, str, bool]]:
    return {(n.status.node_id, n.status.address, n.up) for n in cluster.coordinator.status().nodes}


@pytest.mark.parametrize("token", [None, "Bearer a-guessed-token"])
def test_a_forged_heartbeat_without_the_token_is_refused_and_the_view_is_unchanged(cluster, token):
    before = _view(cluster)
    metadata = ((NODE_KEY_KEY, "forger"),) + ((("authorization", token),) if token else ())
    refused = _register(
        cluster.coordinator.registry, metadata, _forged_report("rogue", "127.0.0.1:1")
    )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.details() == REFUSAL
    assert _view(cluster) == before


def test_a_registration_under_a_live_workers_id_with_another_key_is_refused(cluster):
    (live,) = [n for n in cluster.coordinator.status().nodes if n.status.node_id == "worker-a"]
    before = _view(cluster)
    metadata = (*token_metadata(), (NODE_KEY_KEY, "not-worker-a's-key"))
    refused = _register(
        cluster.coordinator.registry, metadata, _forged_report("worker-a", live.status.address)
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details() == "registration refused", "nothing about worker-a"
    # The refused stream has ended: worker-a's own stream still owns the id, so it stays
    # up and keeps serving (the finding: the stream's end took it out of routing).
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert _view(cluster) == before
        time.sleep(0.1)
    assert ready_replicas(cluster.coordinator)[GEMMA] == {"worker-a", "worker-b"}
