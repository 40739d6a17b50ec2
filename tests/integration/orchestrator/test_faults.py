"""Faults in a cluster of its own: a worker killed mid-stream or stopped for an upgrade, a
coordinator restarted."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2_grpc
from support.cluster import ready_replicas, start_coordinator, start_node, wait_for
from support.models import GEMMA

CATALOG = [
    {"alias": GEMMA, "path": "builtin:gemma-3-270m", "replicas": 2, "n_ctx": 1024,
     "n_threads": 1},
]  # fmt: skip
DRAINED = gen_pb.SamplingParams(temperature=0, max_tokens=60)
GRACE_S = 60  # the workers' shutdown_grace_s: ample for a drained stream on a loaded machine
SHORT = gen_pb.SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture
def small_cluster(tmp_path) -> Iterator[tuple]:
    coordinator = start_coordinator(tmp_path, CATALOG)
    workers = {}
    try:
        for name in ("worker-a", "worker-b"):
            workers[name] = start_node(
                tmp_path, coordinator, name, "--shutdown-grace-s", str(GRACE_S)
            )
        wait_for(
            lambda: ready_replicas(coordinator).get(GEMMA) == set(workers), 120, "two replicas"
        )
        yield coordinator, workers
    finally:
        for worker in workers.values():
            worker.stop()
        coordinator.stop()


def _generate(stub, sampling=SHORT) -> str:
    call = stub.Generate(gen_pb.GenerateRequest(model=GEMMA, prompt="Hi", sampling=sampling))
    list(call)
    return dict(call.initial_metadata())["x-llamaherd-node"]


def test_killed_worker_s_stream_continues_on_the_survivor_and_it_leaves_routing(small_cluster):
    """A stream in flight on a killed worker moves to the other replica, from the text
    already sent; the trailing metadata says where it moved (issue 14, finding 4)."""
    coordinator, workers = small_cluster
    with grpc.insecure_channel(coordinator.gateway) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = stub.Generate(gen_pb.GenerateRequest(model=GEMMA, prompt="Count:", sampling=DRAINED))
        stream = iter(call)
        first = next(stream)
        victim = dict(call.initial_metadata())["x-llamaherd-node"]
        survivor = next(n for n in workers if n != victim)

        workers[victim].process.send_signal(signal.SIGKILL)
        rest = list(stream)  # raises if the stream was cut
        assert rest[-1].finish_reason != gen_pb.FINISH_REASON_UNSPECIFIED, "ended unfinished"
        assert rest[-1].usage.completion_tokens == len(first.token_ids) + sum(
            len(chunk.token_ids) for chunk in rest
        )
        assert dict(call.trailing_metadata())["x-llamaherd-migrated"] == f"{victim}->{survivor}"

        # Requests keep succeeding, on the survivor, right away.
        for _ in range(4):
            assert _generate(stub) == survivor

        def victim_down() -> bool:
            nodes = {n.status.node_id: n for n in coordinator.status().nodes}
            return not nodes[victim].up

        wait_for(victim_down, 5, f"{victim} to leave routing")


def test_a_worker_stopped_for_an_upgrade_finishes_its_streams_and_takes_no_new_ones(
    small_cluster,
):
    """SIGTERM (systemctl stop, a rolling upgrade) drains: the node's models turn DRAINING,
    gateways route elsewhere, and the stream in flight runs to its end before the node
    leaves."""
    coordinator, workers = small_cluster
    with grpc.insecure_channel(coordinator.gateway) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = stub.Generate(gen_pb.GenerateRequest(model=GEMMA, prompt="Count:", sampling=DRAINED))
        stream = iter(call)
        first = next(stream)
        victim = dict(call.initial_metadata())["x-llamaherd-node"]
        survivor = next(n for n in workers if n != victim)

        workers[victim].process.send_signal(signal.SIGTERM)
        for _ in range(3):
            assert _generate(stub) == survivor
        rest = list(stream)  # raises if the stream was cut
        assert rest[-1].finish_reason != gen_pb.FINISH_REASON_UNSPECIFIED, "ended unfinished"
        assert rest[-1].usage.completion_tokens == len(first.token_ids) + sum(
            len(chunk.token_ids) for chunk in rest
        )
        assert workers[victim].process.wait(timeout=GRACE_S) == 0
        log = workers[victim].log_tail()
        assert "draining: the worker is shutting down" in log
        assert "still in flight" not in log

        wait_for(lambda: ready_replicas(coordinator).get(GEMMA) == {survivor}, 10,
                 f"{victim} to leave routing")  # fmt: skip


def test_hung_worker_leaves_routing_after_missed_heartbeats(small_cluster):
    coordinator, workers = small_cluster
    with grpc.insecure_channel(coordinator.gateway) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        workers["worker-a"].process.send_signal(signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            status = wait_for(
                lambda: next(
                    (
                        n
                        for n in coordinator.status().nodes
                        if n.status.node_id == "worker-a" and not n.up
                    ),
                    None,
                ),
                10,
                "worker-a to be marked down",
            )
            assert time.monotonic() - stopped_at < 6
            assert "no heartbeat" in status.down_reason
            for _ in range(3):
                assert _generate(stub) == "worker-b"
        finally:
            workers["worker-a"].process.send_signal(signal.SIGCONT)
        # Back from the pause, it heartbeats again and rejoins.
        wait_for(lambda: ready_replicas(coordinator).get(GEMMA) == {"worker-a", "worker-b"},
                 10, "worker-a to rejoin")  # fmt: skip


def test_a_restarted_coordinator_adopts_the_plane_its_killed_predecessor_left(
    small_cluster, tmp_path
):
    # The killed coordinator's registry, placement and gateway keep serving (detached Ray
    # actors on a head of their own); the restart adopts them: the workers never re-register.
    coordinator, workers = small_cluster
    coordinator.stop(signal.SIGKILL)
    restarted = start_coordinator(tmp_path, CATALOG, ports=coordinator.ports(), name="restarted")
    try:
        wait_for(
            lambda: ready_replicas(restarted).get(GEMMA) == set(workers),
            30,
            "the workers to register with the new coordinator",
        )
        with grpc.insecure_channel(restarted.gateway) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            assert _generate(stub) in workers
        # Placement found the models already loaded: nothing was loaded twice.
        status = restarted.status()
        for node in status.nodes:
            assert [m.alias for m in node.status.models] == [GEMMA]
        log = restarted.log_tail(lines=500)
        assert "adopted the running control plane: cluster-state, placement, gateway-" in log
        assert "loading gemma" not in log
    finally:
        assert restarted.stop() == 0, restarted.log_tail()
