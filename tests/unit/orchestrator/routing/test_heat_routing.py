"""Routing by heat and power with the recorded boards driven through their ranges: the jtop
and NVML fixtures, read through the real Jetson and NVML sources, are the telemetry of real
nodes in a real snapshot, and real route() calls with the real policies (clock injected)
share out new requests as the gateway does, counting each one it has sent.

Cool -> near the limit -> throttling -> recovering -> cool: the default policy sends the hot
node less of the new work at each step and gives its share back as it cools. Idle -> loaded
power: tokens-per-joule sends work to the node that makes the most tokens per joule."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest
from support.recorded_telemetry import RecordedGpuBox, RecordedJetson

from common.telemetry import NodeSample
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.routing.candidates import route
from orchestrator.routing.policies import LeastExpectedLatency, RoutingPolicy, TokensPerJoule
from orchestrator.routing.request import RouteRequest
from tests.unit.orchestrator.factories import NOW, node, replica

REQUESTS = 24  # new requests routed per step, none finishing meanwhile
ROUTE = RouteRequest("m")


def serving(node_id: str, sample: NodeSample, decode_tps: float = 20.0) -> Node:
    """A node with a ready replica of "m" (4 slots, idle) whose last heartbeat carried
    `sample`."""
    bare = node(node_id, replica("m", slots_total=4, decode_tps=decode_tps))
    return dataclasses.replace(bare, status=dataclasses.replace(bare.status, telemetry=sample))


def share(policy: RoutingPolicy, *nodes: Node, requests: int = REQUESTS) -> Counter[str]:
    """Where `requests` new requests go, each counted in flight once sent (as the gateway's
    Router counts them), over a snapshot of `nodes` taken now."""
    snapshot = ClusterSnapshot(version=1, taken_at=NOW, nodes=nodes)
    inflight: Counter[tuple[NodeId, str]] = Counter()
    for _ in range(requests):
        chosen = route(snapshot, ROUTE, now=NOW, policy=policy, inflight=inflight)
        inflight[(chosen.node_id, "m")] += 1
    return Counter({node_id: n for (node_id, _), n in inflight.items()})


def default_policy() -> LeastExpectedLatency:
    return LeastExpectedLatency(random.Random(7), clock=lambda: NOW)


@pytest.fixture
def two_agx(tmp_path: Path) -> Iterator[tuple[RecordedJetson, RecordedJetson]]:
    boards = (
        RecordedJetson("agx-orin-64gb", tmp_path / "a_release"),
        RecordedJetson("agx-orin-64gb", tmp_path / "b_release"),
    )
    yield boards
    for board in boards:
        board.close()


def test_a_heating_jetson_takes_less_new_work_and_takes_its_share_back_as_it_cools(
    two_agx: tuple[RecordedJetson, RecordedJetson],
) -> None:
    cool, heating = two_agx
    policy = default_policy()
    steps = [
        ("cool, as recorded", lambda: heating),
        ("near its limit", lambda: heating.heat_to(90.0)),
        ("throttling", lambda: heating.heat_to(97.0).throttle()),
        ("recovering", lambda: heating.throttle(False).heat_to(88.0)),
        ("cool again", lambda: heating.heat_to(heating.recorded_hottest)),
    ]
    taken = {}
    for step, drive in steps:
        board = drive()
        got = share(policy, serving("a", cool.sample(NOW)), serving("b", board.sample(NOW)))
        assert got["a"] + got["b"] == REQUESTS
        taken[step] = got["b"]
    # Measured: 12, 9, 0, 10 and 12 of the 24.
    assert taken["cool, as recorded"] == REQUESTS // 2
    assert taken["cool again"] == REQUESTS // 2
    assert (
        taken["cool, as recorded"]
        > taken["recovering"]
        > taken["near its limit"]
        > taken["throttling"]
    ), taken  # fmt: skip


def test_a_heating_gpu_takes_less_new_work_and_takes_its_share_back_as_it_cools() -> None:
    cool = RecordedGpuBox("x86-rtx4090").heat_to(60).clocks_held()
    heating = RecordedGpuBox("x86-rtx4090").heat_to(60).clocks_held()
    policy = default_policy()
    thermal = pynvml.nvmlClocksEventReasonSwThermalSlowdown
    power_cap = pynvml.nvmlClocksEventReasonSwPowerCap
    steps = [
        ("cool", lambda: heating),
        ("near its slowdown temperature", lambda: heating.heat_to(85)),
        ("thermal slowdown", lambda: heating.heat_to(92).clocks_held(thermal)),
        ("at its power cap, cooled", lambda: heating.heat_to(70).clocks_held(power_cap)),
        ("cool again", lambda: heating.heat_to(60).clocks_held()),
    ]
    taken = {}
    for step, drive in steps:
        box = drive()
        got = share(policy, serving("a", cool.sample(NOW)), serving("b", box.sample(NOW)))
        taken[step] = got["b"]
    # Measured: 12, 9, 0, 7 and 12 of the 24.
    assert taken["cool"] == taken["cool again"] == REQUESTS // 2
    assert taken["cool"] > taken["near its slowdown temperature"] > taken["thermal slowdown"]
    assert taken["cool"] > taken["at its power cap, cooled"] > taken["thermal slowdown"]
    cool.close()
    heating.close()


@pytest.fixture
def agx_and_nano(tmp_path: Path) -> Iterator[tuple[RecordedJetson, RecordedJetson]]:
    boards = (
        RecordedJetson("agx-orin-64gb", tmp_path / "agx_release"),
        RecordedJetson("orin-nano-8gb", tmp_path / "nano_release"),
    )
    yield boards
    for board in boards:
        board.close()


def test_tokens_per_joule_prefers_the_node_that_makes_more_tokens_per_joule(
    agx_and_nano: tuple[RecordedJetson, RecordedJetson],
) -> None:
    agx, nano = agx_and_nano

    def nodes() -> tuple[Node, Node]:
        # Measured 20 and 15 tokens/s a stream: within RATE_TOLERANCE, so both count as 15
        # and on speed the two are equal; the Nano draws less.
        return (
            serving("agx", agx.sample(NOW), decode_tps=20.0),
            serving("nano", nano.sample(NOW), decode_tps=15.0),
        )

    efficient = TokensPerJoule(random.Random(7), clock=lambda: NOW)
    # As recorded (AGX 26.8 W, Nano 8.5 W): 15/26.8 = 0.56 against 15/8.5 = 1.76 tokens
    # per joule. The first request goes to the Nano; over many, the Nano takes more than
    # the default gives it (half).
    assert route(ClusterSnapshot(1, NOW, nodes()), ROUTE, now=NOW, policy=efficient).node_id \
        == "nano"  # fmt: skip
    by_energy = share(efficient, *nodes())
    by_latency = share(default_policy(), *nodes())
    assert by_latency["nano"] == REQUESTS // 2
    assert by_energy["nano"] > by_latency["nano"], by_energy
    # The AGX idles down to 6 W: 15/6 = 2.5 tokens per joule, now the better one.
    agx.draw(6.0)
    assert route(ClusterSnapshot(1, NOW, nodes()), ROUTE, now=NOW, policy=efficient).node_id \
        == "agx"  # fmt: skip
    assert share(efficient, *nodes())["agx"] > by_energy["agx"]
