"""The standard gRPC health service and server reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def test_health_reports_serving_overall_and_for_the_worker_service(health_stub):
    for service in ("", "llamaherd.v1.Worker"):
        reply = health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_for_an_unknown_service_is_not_found(health_stub):
    try:
        health_stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("expected NOT_FOUND")


def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert {"llamaherd.v1.Worker", "grpc.health.v1.Health"} <= names
