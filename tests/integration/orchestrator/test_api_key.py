"""The optional API key on both front doors of a real coordinator (no workers needed)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import inference_pb2_grpc
from support.cluster import Coordinator, start_coordinator

KEY = "s3cret-key-for-tests"
CATALOG = [{"alias": "gemma", "path": "builtin:gemma-3-270m"}]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    coordinator = start_coordinator(
        tmp_path_factory.mktemp("api-key"), CATALOG, env={"LLAMAHERD_COORDINATOR_API_KEY": KEY}
    )
    yield coordinator
    assert coordinator.stop() == 0, coordinator.log_tail()
    assert KEY not in coordinator.log_path.read_text(errors="replace")


def test_openai_clients_need_the_key(guarded):
    wrong = openai.OpenAI(base_url=guarded.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.code == "invalid_api_key"
    assert "not valid" in info.value.message
    right = openai.OpenAI(base_url=guarded.base_url, api_key=KEY, max_retries=0)
    assert [m.id for m in right.models.list()] == []  # nothing placed: no workers


def test_missing_key_says_how_to_send_one_and_health_stays_open(guarded):
    root = guarded.base_url.removesuffix("/v1")
    refused = httpx.post(f"{root}/v1/chat/completions", json={}, timeout=10)
    assert refused.status_code == 401
    assert "Authorization: Bearer" in refused.json()["error"]["message"]
    health = httpx.get(f"{root}/health", timeout=10)  # open, and honest: nothing is placed
    assert health.status_code == 503 and health.json()["status"] == "no_models"


def test_grpc_calls_need_the_key_in_metadata(guarded):
    with grpc.insecure_channel(guarded.gateway) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(inf_pb.ListClusterModelsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = stub.Generate(
            gen_pb.GenerateRequest(model="gemma", prompt="Hi"),
            metadata=[("authorization", "Bearer wrong")],
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not valid" in info.value.details()

        reply = stub.ListModels(
            inf_pb.ListClusterModelsRequest(), metadata=[("authorization", f"Bearer {KEY}")],
            timeout=10,
        )  # fmt: skip
        assert list(reply.models) == []
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
