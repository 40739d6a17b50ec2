"""A small synchronous client of a gateway's gRPC Inference API, for the CLI and tools."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import inference_pb2_grpc

from common.channels import ChannelClient
from common.wire.generation import chat_request

DEFAULT_GATEWAY = "127.0.0.1:8001"


class GatewayClient(ChannelClient):
    """`api_key`, when given, goes with every call as `authorization: Bearer <key>` metadata,
    what a gateway started with an API key expects (orchestrator/gateway/auth.py)."""

    def __init__(
        self,
        address: str = DEFAULT_GATEWAY,
        timeout: float | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(address, timeout)
        self.stub = inference_pb2_grpc.InferenceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def status(self) -> inf_pb.ClusterStatusResponse:
        return self.stub.ClusterStatus(
            inf_pb.ClusterStatusRequest(), timeout=self.timeout, metadata=self._metadata
        )

    def models(self) -> list[inf_pb.ClusterModel]:
        reply = self.stub.ListModels(
            inf_pb.ListClusterModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return list(reply.models)

    def ready_replicas(self) -> dict[str, int]:
        """Ready replicas by alias; empty while the gateway is unreachable."""
        try:
            return {m.alias: m.ready_replicas for m in self.models()}
        except grpc.RpcError:
            return {}

    def placement_problems(self) -> list[tuple[str, str]]:
        try:
            return [(p.alias, p.reason) for p in self.status().placement_problems]
        except grpc.RpcError:
            return []

    def chat(
        self,
        model: str,
        messages: Sequence[tuple[str, str]],
        sampling: gen_pb.SamplingParams | None = None,
    ) -> Iterator[gen_pb.GenerationChunk]:
        request = chat_request(model, messages, sampling)
        yield from self.stub.Chat(request, metadata=self._metadata)
