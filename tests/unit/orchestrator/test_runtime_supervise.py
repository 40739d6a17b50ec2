"""The coordinator's supervisor on a Ray cluster of several nodes, with Ray faked at its
boundary (the node list, actor creation, `ray.get`): a node that joins gets a gateway, a
node that cannot start one does not end the coordinator and is tried again, a node that
leaves loses its gateway. The real thing: tests/integration/orchestrator/test_two_ray_nodes.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray
from pydantic import SecretStr

from orchestrator import runtime
from orchestrator.config import CoordinatorSettings
from orchestrator.runtime import ControlPlane, Described

# Ray node ids are 28 bytes, in hex.
HEAD, SECOND = "aa" * 28, "bb" * 28


class _Call:
    def __init__(self, node: str) -> None:
        self.node = node


class _Gateway:
    """What `GatewayRemote.options(...).remote(...)` returns: an actor handle."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.describe = self  # actor.describe.remote()

    def remote(self) -> _Call:
        return _Call(self.node)


class _FakeRay:
    def __init__(self) -> None:
        self.nodes: dict[str, bool] = {}
        self.failing: set[str] = set()  # nodes whose gateway fails to start
        self.started: list[str] = []

    def options(self, scheduling_strategy: Any, **_: Any) -> _FakeRay:
        self._node = scheduling_strategy.node_id
        return self

    def remote(self, *_: Any) -> _Gateway:
        return _Gateway(self._node)

    def get(self, call: _Call, timeout: float) -> Described:
        if call.node in self.failing:
            raise ray.exceptions.RayActorError()
        self.started.append(call.node)
        return Described("key", (8000, 8001))

    def list_nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": n, "Alive": alive} for n, alive in self.nodes.items()]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _FakeRay:
    fake = _FakeRay()
    monkeypatch.setattr(runtime, "_ray_nodes", fake.list_nodes)
    monkeypatch.setattr(runtime, "GatewayRemote", fake)
    monkeypatch.setattr(runtime.ray, "get", fake.get)
    return fake


def _plane() -> ControlPlane:
    return ControlPlane(CoordinatorSettings(cluster_token=SecretStr("t" * 32)))


def test_a_joined_node_gets_a_gateway_and_a_lost_one_loses_it(fake: _FakeRay) -> None:
    plane = _plane()
    fake.nodes = {HEAD: True}
    plane.supervise_once()
    fake.nodes[SECOND] = True
    plane.supervise_once()
    assert fake.started == [HEAD, SECOND]
    fake.nodes[SECOND] = False
    plane.supervise_once()
    assert fake.started == [HEAD, SECOND]  # not restarted anywhere
    assert set(plane._gateways.by_node) == {HEAD}


def test_a_node_that_cannot_start_a_gateway_is_retried_not_fatal(fake: _FakeRay) -> None:
    plane = _plane()
    fake.nodes = {HEAD: True}
    plane.supervise_once()
    fake.nodes[SECOND] = True
    fake.failing = {SECOND}
    plane.supervise_once()  # logs, does not raise
    assert fake.started == [HEAD]
    fake.failing = set()
    plane.supervise_once()
    assert fake.started == [HEAD, SECOND]
    plane.supervise_once()  # every node has its gateway: nothing more starts
    assert fake.started == [HEAD, SECOND]
