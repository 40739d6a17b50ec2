"""Abandoned work stops (issue 14, finding 3): clients of a real gateway that give up, by
disconnecting (HTTP, non-streaming: it kept both workers' slots busy for minutes) or by
cancelling or letting their deadline pass (gRPC), free the workers' slots within a second
or so (the figures come from the workers' heartbeats, every 0.5 s)."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2_grpc
from support.cluster import Coordinator, wait_for
from support.models import GEMMA

LONG = 400  # tokens: tens of seconds on this machine, were they generated


def _busy(coordinator: Coordinator) -> int:
    return sum(
        m.active_requests + m.queued_requests
        for n in coordinator.status().nodes
        for m in n.status.models
        if m.alias == GEMMA
    )


def _wait_idle(coordinator: Coordinator, since: float) -> float:
    wait_for(lambda: _busy(coordinator) == 0, 10, "the workers to drop the abandoned requests")
    return time.monotonic() - since


def test_http_clients_that_give_up_free_the_slots(cluster):
    coordinator = cluster.coordinator
    wait_for(lambda: _busy(coordinator) == 0, 30, "an idle cluster")
    body = {"model": GEMMA, "prompt": "Count:", "max_tokens": LONG, "temperature": 0}
    with httpx.Client(base_url=coordinator.base_url) as client:
        for _ in range(4):
            with pytest.raises(httpx.TimeoutException):
                client.post("/completions", json=body, timeout=1.0)
    gave_up = time.monotonic()
    assert _wait_idle(coordinator, gave_up) < 3


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_grpc_clients_that_give_up_free_the_slots(cluster, how):
    coordinator = cluster.coordinator
    wait_for(lambda: _busy(coordinator) == 0, 30, "an idle cluster")
    request = gen_pb.GenerateRequest(
        model=GEMMA, prompt="Count:", sampling=gen_pb.SamplingParams(max_tokens=LONG)
    )
    with grpc.insecure_channel(coordinator.gateway) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        if how == "deadline":
            call = stub.Generate(request, timeout=1.0)
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            call = stub.Generate(request)
            next(iter(call))
            call.cancel()
        gave_up = time.monotonic()
    assert _wait_idle(coordinator, gave_up) < 3
