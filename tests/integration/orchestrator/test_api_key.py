"""The optional API key on both front doors of a real coordinator (no workers needed)."""

from __future__ import annotations

import json
import os
import subprocess
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
from support.worker_process import LLAMAHERD

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


def _cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `llamaherd ARGS` with LLAMAHERD_API_KEY set to `key`, or unset."""
    env = {name: value for name, value in os.environ.items() if name != "LLAMAHERD_API_KEY"}
    if key is not None:
        env["LLAMAHERD_API_KEY"] = key
    return subprocess.run(
        [LLAMAHERD, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_status_and_chat_send_the_key_from_the_environment_or_the_flag(guarded):
    for run in (
        _cli("status", "--gateway", guarded.gateway, "--json", key=KEY),
        _cli("status", "--gateway", guarded.gateway, "--json", "--api-key", KEY),
    ):
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["nodes"] == []  # no workers
    # The chat got past the key: the cluster answered that it has no model placed yet.
    chat = _cli("chat", "Hi", "--gateway", guarded.gateway, key=KEY)
    assert chat.returncode == 1
    assert (
        chat.stderr.strip() == "llamaherd chat: the cluster serves no chat model yet; pass --model"
    )


def test_status_and_chat_without_the_key_say_where_to_put_it_in_one_line(guarded):
    for command in (["status"], ["chat", "Hi"]):
        run = _cli(*command, "--gateway", guarded.gateway)
        assert run.returncode == 1 and run.stdout.strip() == ""
        assert run.stderr.strip() == (
            f"llamaherd {command[0]}: the gateway at {guarded.gateway} requires an API key: "
            "set LLAMAHERD_API_KEY or pass --api-key"
        )


def test_a_wrong_key_is_refused_in_one_line_that_never_shows_a_key(guarded):
    run = _cli("status", "--gateway", guarded.gateway, key="wrong-key")
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(
        f"llamaherd status: the gateway at {guarded.gateway} refused the API key"
    )
    assert "not valid" in line and "set LLAMAHERD_API_KEY or pass --api-key" in line
    assert "wrong-key" not in line and KEY not in line
    # The flag wins over the environment.
    assert (
        _cli("status", "--gateway", guarded.gateway, "--api-key", KEY, key="wrong").returncode == 0
    )
