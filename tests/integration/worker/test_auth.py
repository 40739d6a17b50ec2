"""The Worker API behind the cluster's join token: the fixture's worker runs with the test
run's token, as every worker of a cluster does."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as w_pb
from llamaherd.v1 import worker_pb2_grpc
from support.auth import cluster_token
from support.models import GEMMA

from common.cluster_auth import REFUSAL


@pytest.mark.parametrize("sent", [None, "Bearer not-the-token"])
def test_a_worker_rpc_without_the_token_is_unauthenticated_while_health_answers(worker, stub, sent):
    metadata = () if sent is None else (("authorization", sent),)
    with grpc.insecure_channel(worker.address) as channel:
        anonymous = worker_pb2_grpc.WorkerStub(channel)
        for call in (
            lambda: anonymous.ListModels(w_pb.ListModelsRequest(), metadata=metadata, timeout=5),
            lambda: list(
                anonymous.Generate(
                    gen_pb.GenerateRequest(model=GEMMA, prompt="hi"), metadata=metadata
                )
            ),
            lambda: anonymous.UnloadModel(w_pb.UnloadModelRequest(alias=GEMMA), metadata=metadata),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == REFUSAL
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Reflection serves only callers who may use the API anyway.
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                list_services="")]), timeout=5))  # fmt: skip
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The models are untouched, and a caller with the token is served.
    assert GEMMA in {m.alias for m in stub.ListModels(w_pb.ListModelsRequest(), timeout=5).models}
    assert cluster_token().get_secret_value() not in worker.log_path.read_text()
