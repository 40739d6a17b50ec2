"""The Worker gRPC service: converts, delegates to the registry and the model, streams back.

Handlers stay thin: protobuf in, domain types to the model (a worker.models.served
ServedModel, local or split alike), protobuf out. Errors are raised as LlamaherdError and
mapped to status codes by the interceptor (common.grpc_errors); client cancellation
arrives as asyncio cancellation and stops the model's work at the next token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from llamaherd.v1 import worker_pb2_grpc

from common.errors import FailedPrecondition, InvalidArgument
from common.grpc_errors import request_id
from common.wire.leases import lease_to_proto
from common.wire.models import estimate_to_proto
from common.wire.status import model_status_to_proto
from worker import wire
from worker.models.chat import with_assistant_prefix
from worker.models.registry import ModelRegistry
from worker.split.lender import RpcLender

log = logging.getLogger(__name__)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):  # type: ignore[misc]
    """The Worker API over a registry of served models."""

    def __init__(self, registry: ModelRegistry, lender: RpcLender | None = None) -> None:
        self._registry = registry
        self._lender = lender

    async def ListModels(
        self, request: pb.ListModelsRequest, context: aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[model_status_to_proto(i) for i in self._registry.list()]
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: aio.ServicerContext
    ) -> pb.LoadModelResponse:
        config = wire.model_config_from_proto(request.spec)
        info = await self._registry.load(config)
        return pb.LoadModelResponse(model=model_status_to_proto(info))

    async def EstimateModel(
        self, request: pb.LoadModelRequest, context: aio.ServicerContext
    ) -> pb.MemoryEstimate:
        estimate = await self._registry.estimate(wire.model_config_from_proto(request.spec))
        return estimate_to_proto(estimate)

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        await self._registry.unload(request.alias)
        return pb.UnloadModelResponse()

    async def Generate(
        self, request: gen_pb.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        sampling = wire.sampling_from_proto(request.sampling)
        constraint = wire.constraint_from_proto(request.constraint)
        if request.prompt and request.prompt_tokens:
            raise InvalidArgument("give prompt or prompt_tokens, not both")
        prompt = list(request.prompt_tokens) if request.prompt_tokens else request.prompt
        rid = request_id(context)
        with self._registry.lease(request.model) as model:
            events = model.generate(rid, prompt, sampling, constraint, request.n or 1)
            async for event in events:
                yield wire.chunk_to_proto(event)

    async def Chat(
        self, request: gen_pb.ChatRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        sampling = wire.sampling_from_proto(request.sampling)
        constraint = wire.constraint_from_proto(request.constraint)
        messages = with_assistant_prefix(
            wire.messages_from_proto(list(request.messages)), request.assistant_prefix
        )
        tools = wire.tools_from_proto(request)  # checked by the model, on its request pool
        rid = request_id(context)
        with self._registry.lease(request.model) as model:
            async for event in model.chat(
                rid, messages, sampling, constraint, tools, request.n or 1
            ):
                yield wire.chunk_to_proto(event)

    async def Embed(
        self, request: gen_pb.EmbedRequest, context: aio.ServicerContext
    ) -> gen_pb.EmbedResponse:
        normalize = request.normalize if request.HasField("normalize") else True
        with self._registry.lease(request.model) as model:
            result = await model.embed(request_id(context), list(request.inputs), normalize)
        return wire.embeddings_to_proto(result)

    async def Tokenize(
        self, request: gen_pb.TokenizeRequest, context: aio.ServicerContext
    ) -> gen_pb.TokenizeResponse:
        add_special = request.add_special if request.HasField("add_special") else True
        parse_special = request.parse_special if request.HasField("parse_special") else True
        with self._registry.lease(request.model) as model:
            if request.HasField("chat"):
                messages = with_assistant_prefix(
                    wire.messages_from_proto(list(request.chat.messages)),
                    request.chat.assistant_prefix,
                )
                chat = await model.tokenize_chat(
                    request_id(context),
                    messages,
                    request.with_pieces,
                    wire.tools_from_proto(request.chat),
                )
                return wire.tokenized_to_proto(chat)
            tokenized = await model.tokenize(
                request_id(context), request.text, add_special, parse_special, request.with_pieces
            )
        return wire.tokenized_to_proto(tokenized)

    async def Detokenize(
        self, request: gen_pb.DetokenizeRequest, context: aio.ServicerContext
    ) -> gen_pb.DetokenizeResponse:
        with self._registry.lease(request.model) as model:
            text = await model.detokenize(request_id(context), list(request.tokens))
        return gen_pb.DetokenizeResponse(text=text)

    async def StartRpcServer(
        self, request: pb.StartRpcServerRequest, context: aio.ServicerContext
    ) -> pb.RpcServerInfo:
        lender = self._require_lender()
        lease = await lender.start(
            request.lease_id,
            request.head_host,
            request.reserve_bytes,
            request.n_threads if request.HasField("n_threads") else None,
        )
        return lease_to_proto(lease, lender.memory_free())

    async def StopRpcServer(
        self, request: pb.StopRpcServerRequest, context: aio.ServicerContext
    ) -> pb.StopRpcServerResponse:
        await self._require_lender().stop(request.lease_id)
        return pb.StopRpcServerResponse()

    def _require_lender(self) -> RpcLender:
        if self._lender is None:
            raise FailedPrecondition(
                "this llama.cpp build has no ggml RPC backend, so this node cannot lend its "
                "device; rebuild llama-cpp-python with -DGGML_RPC=ON"
            )
        return self._lender
