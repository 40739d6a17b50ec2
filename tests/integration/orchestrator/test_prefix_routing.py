"""Prefix-aware routing end to end: a real coordinator with `routing_policy: prefix-cache` in
front of two real workers. Each conversation's next turn returns to the node whose slot
holds it, once that node's heartbeat reports its prefix hashes.

Both nodes are idle between turns, so the default would pick either at random: a follow-up
lands on its conversation's node by chance only one time in two, and three follow-ups
across two conversations one time in eight.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2_grpc
from support.cluster import Coordinator, ready_replicas, start_coordinator, start_node, wait_for
from support.models import GEMMA

from common.prefix import chat_chain, matched_chars

NODE_KEY = "x-llamaherd-node"
CATALOG = [
    {"alias": GEMMA, "path": "builtin:gemma-3-270m", "replicas": 2, "n_ctx": 1024,
     "n_batch": 256, "n_threads": 1},
]  # fmt: skip
# ~1,000 characters each (four blocks): long enough to be worth aiming at.
FLEET = "You are the duty engineer of a fleet of Jetson boards; answer in one line. " * 14
LOGS = "You summarise maintenance logs of delivery robots in one short sentence. " * 14
Messages = list[tuple[str, str]]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    workdir: Path = tmp_path_factory.mktemp("prefix-routing")
    coordinator = start_coordinator(workdir, CATALOG, "--routing-policy", "prefix-cache")
    workers = []
    try:
        workers = [start_node(workdir, coordinator, name) for name in ("node-a", "node-b")]
        wait_for(
            lambda: ready_replicas(coordinator).get(GEMMA) == {"node-a", "node-b"},
            120,
            "gemma on both nodes",
        )
        yield coordinator
    finally:
        for worker in workers:
            worker.stop()
        code = coordinator.stop()
    assert code == 0, f"coordinator did not stop cleanly ({code}):\n{coordinator.log_tail()}"


@pytest.fixture(scope="module")
def inference(coordinator: Coordinator) -> Iterator[inference_pb2_grpc.InferenceStub]:
    with grpc.insecure_channel(coordinator.gateway) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


def _turn(stub: inference_pb2_grpc.InferenceStub, messages: Messages) -> tuple[str, str]:
    """The reply to `messages` and the node that served it."""
    request = gen_pb.ChatRequest(
        model=GEMMA,
        messages=[gen_pb.ChatMessage(role=r, content=c) for r, c in messages],
        sampling=gen_pb.SamplingParams(temperature=0, max_tokens=8),
    )
    call = stub.Chat(request, timeout=120)
    text = "".join(chunk.text for chunk in call)
    return text, dict(call.initial_metadata())[NODE_KEY]


def _reported(coordinator: Coordinator, node: str, messages: Messages) -> bool:
    """Whether the gateway's view of `node` holds the opening of `messages`, all but the
    last message deep (the conversation so far, reply included), from a heartbeat sent
    after the turn ended (idle again: a report from during the turn shows its load, which
    rightly counts against the node)."""
    chain = chat_chain(messages).hashes
    history = chat_chain(messages[:-1])  # what the node's slot should hold
    for entry in coordinator.status().nodes:
        if entry.status.node_id != node:
            continue
        for model in entry.status.models:
            if model.alias == GEMMA:
                if model.active_requests or model.queued_requests:
                    return False
                held = matched_chars(chain, set(model.prefix_hashes))
                return held > 0 and held == history.depth_chars
    return False


def _converse(coordinator: Coordinator, stub, system: str, questions: list[str]) -> list[str]:
    """A conversation, one turn per question, each sent once the node that served the last
    turn reports it; the nodes that served each turn."""
    messages: Messages = [("system", system)]
    nodes = []
    for question in questions:
        messages.append(("user", question))
        reply, node = _turn(stub, messages)
        nodes.append(node)
        messages.append(("assistant", reply))
        follow_up = [*messages, ("user", "?")]
        wait_for(lambda n=node, f=follow_up: _reported(coordinator, n, f), 30, f"{node}'s hashes")
    return nodes


def test_each_conversation_returns_to_the_node_holding_it(coordinator, inference):
    fleet = _converse(coordinator, inference, FLEET, ["Hottest board?", "Coolest?", "Why?"])
    assert fleet == [fleet[0]] * 3, fleet
    logs = _converse(coordinator, inference, LOGS, ["Robot 7?", "Robot 9?"])
    assert logs == [logs[0]] * 2, logs
