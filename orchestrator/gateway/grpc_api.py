"""The Inference gRPC service: requests relayed unchanged to a worker, status from the view.

The initial metadata names the node that serves a call (x-llamaherd-node); a stream that
moved to another node mid-reply (orchestrator.gateway.router) ends with trailing metadata
x-llamaherd-migrated: one "FROM->TO" entry per move. A client that cancels, or whose
deadline passes, cancels the handler, and with it the worker's call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import inference_pb2_grpc

from common.errors import InvalidArgument
from common.grpc_errors import request_id
from orchestrator.cluster.reports import view_to_proto
from orchestrator.cluster.types import NodeId
from orchestrator.gateway import views
from orchestrator.gateway.route_requests import (
    continued,
    for_embed,
    for_generation,
    grpc_session,
    resumable,
)
from orchestrator.gateway.router import OpenGeneration, Progress, Router
from orchestrator.worker_client import WorkerClient, WorkerStream

NODE_KEY = "x-llamaherd-node"
MIGRATED_KEY = "x-llamaherd-migrated"


class InferenceServicer(inference_pb2_grpc.InferenceServicer):  # type: ignore[misc]
    def __init__(self, router: Router) -> None:
        self._router = router

    async def Generate(
        self, request: gen_pb.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        rid = request_id(context)

        def open_call(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
            generate = continued(request, sent.text, sent.tokens)
            assert isinstance(generate, gen_pb.GenerateRequest)
            return worker.generate(generate, rid)

        async for chunk in self._relay(request, open_call, context):
            yield chunk

    async def Chat(
        self, request: gen_pb.ChatRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        rid = request_id(context)

        def open_call(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
            chat = continued(request, sent.text, sent.tokens)
            assert isinstance(chat, gen_pb.ChatRequest)
            return worker.chat(chat, rid)

        async for chunk in self._relay(request, open_call, context):
            yield chunk

    async def _relay(
        self,
        request: gen_pb.GenerateRequest | gen_pb.ChatRequest,
        open_call: OpenGeneration,
        context: aio.ServicerContext,
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        """The worker's stream for the same method, with the serving node in the header."""
        _require_model(request.model)
        route = for_generation(request, grpc_session(context.invocation_metadata()))
        chunks = self._router.stream(route, open_call, resumable=resumable(request))
        async for chunk in _with_node_metadata(chunks, context):
            yield chunk

    async def Embed(
        self, request: gen_pb.EmbedRequest, context: aio.ServicerContext
    ) -> gen_pb.EmbedResponse:
        _require_model(request.model)
        rid = request_id(context)
        route = for_embed(request, grpc_session(context.invocation_metadata()))
        response, node = await self._router.unary(route, lambda worker: worker.embed(request, rid))
        await context.send_initial_metadata(((NODE_KEY, node),))
        return response

    async def ListModels(
        self, request: inf_pb.ListClusterModelsRequest, context: aio.ServicerContext
    ) -> inf_pb.ListClusterModelsResponse:
        return views.cluster_models(self._router.snapshot)

    async def ClusterStatus(
        self, request: inf_pb.ClusterStatusRequest, context: aio.ServicerContext
    ) -> inf_pb.ClusterStatusResponse:
        return view_to_proto(views.cluster_status(self._router))


def _require_model(alias: str) -> None:
    if not alias:
        raise InvalidArgument("model is empty: name a model alias (see ListModels)")


async def _with_node_metadata(
    chunks: AsyncIterator[tuple[NodeId, gen_pb.GenerationChunk]], context: aio.ServicerContext
) -> AsyncIterator[gen_pb.GenerationChunk]:
    """The chunks, telling the client in the initial metadata which node serves it and in
    the trailing metadata where the stream moved, if it did."""
    serving: NodeId | None = None
    moves: list[tuple[str, str]] = []
    async for node, chunk in chunks:
        if serving is None:
            await context.send_initial_metadata(((NODE_KEY, node),))
        elif node != serving:
            moves.append((MIGRATED_KEY, f"{serving}->{node}"))
            # Set at once: a stream that fails later still tells where it had moved.
            context.set_trailing_metadata(tuple(moves))
        serving = node
        yield chunk
