"""The Worker gRPC service: converts, delegates to the registry and the model, streams back.

Handlers stay thin. Errors are raised as WorkerError and mapped to status codes by the
interceptor (common.grpc_errors); client cancellation arrives as asyncio cancellation and
stops the model's work at the next token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from llamaherd.v1 import worker_pb2_grpc

from common.errors import FailedPrecondition
from common.grpc_errors import REQUEST_ID_KEY, request_id
from common.wire.leases import lease_to_proto
from worker.api import convert
from worker.engine.batching import Job
from worker.engine.generation import EmbeddingResult, Finished, GenerationEvent
from worker.engine.streams import EventStream
from worker.models.local import HostedModel
from worker.models.registry import ModelRegistry
from worker.split.lender import RpcLender
from worker.split.runner import SplitModel

log = logging.getLogger(__name__)

# Inputs larger than this are tokenized off the event loop so one huge prompt cannot stall
# every other stream; smaller ones are cheaper to tokenize inline than to hand to a thread.
INLINE_TOKENIZE_BYTES = 32 * 1024

T = TypeVar("T")


async def _off_loop_if_large(size: int, build: Callable[[], T]) -> T:
    if size <= INLINE_TOKENIZE_BYTES:
        return build()
    return await asyncio.to_thread(build)


async def _run(hosted: HostedModel, job: Job, stream: EventStream[T]) -> AsyncIterator[T]:
    """Queues the job and yields its events; stops the job if the client goes away."""
    try:
        hosted.engine.submit(job)
    except BaseException:
        job.release()
        raise
    try:
        async for event in stream.events():
            yield event
    finally:
        stream.cancel()
        hosted.engine.withdraw(job)


def _relay_metadata(rid: str) -> tuple[tuple[str, str], ...]:
    return ((REQUEST_ID_KEY, rid),)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):  # type: ignore[misc]
    """Split models (worker.split.runner) are relayed to the child hosting them, request
    and reply unchanged, so callers never see the difference."""

    def __init__(self, registry: ModelRegistry, lender: RpcLender | None = None) -> None:
        self._registry = registry
        self._lender = lender

    async def ListModels(
        self, request: pb.ListModelsRequest, context: aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[convert.model_info_to_proto(i) for i in self._registry.list()]
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: aio.ServicerContext
    ) -> pb.LoadModelResponse:
        config = convert.model_config_from_proto(request.spec)
        info = await self._registry.load(config)
        return pb.LoadModelResponse(model=convert.model_info_to_proto(info))

    async def EstimateModel(
        self, request: pb.LoadModelRequest, context: aio.ServicerContext
    ) -> pb.MemoryEstimate:
        estimate = await self._registry.estimate(convert.model_config_from_proto(request.spec))
        return convert.estimate_to_proto(estimate)

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        await self._registry.unload(request.alias)
        return pb.UnloadModelResponse()

    async def Generate(
        self, request: gen_pb.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        sampling = convert.sampling_from_proto(request.sampling)
        constraint = convert.constraint_from_proto(request.constraint)
        rid = request_id(context)
        with self._registry.lease(request.model) as hosted:
            if isinstance(hosted, SplitModel):
                async for chunk in hosted.relay_stream("Generate", request, _relay_metadata(rid)):
                    yield chunk
                return
            stream: EventStream[GenerationEvent] = EventStream(asyncio.get_running_loop())
            job = await _off_loop_if_large(
                len(request.prompt),
                lambda: hosted.generate_job(rid, request.prompt, sampling, constraint, stream),
            )
            async for event in _run(hosted, job, stream):
                _log_finished(rid, hosted.alias, event)
                yield convert.chunk_to_proto(event)

    async def Chat(
        self, request: gen_pb.ChatRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        sampling = convert.sampling_from_proto(request.sampling)
        constraint = convert.constraint_from_proto(request.constraint)
        messages = convert.messages_from_proto(list(request.messages))
        rid = request_id(context)
        with self._registry.lease(request.model) as hosted:
            if isinstance(hosted, SplitModel):
                async for chunk in hosted.relay_stream("Chat", request, _relay_metadata(rid)):
                    yield chunk
                return
            stream: EventStream[GenerationEvent] = EventStream(asyncio.get_running_loop())
            job = await _off_loop_if_large(
                sum(len(m.content) for m in messages),
                lambda: hosted.chat_job(rid, messages, sampling, constraint, stream),
            )
            async for event in _run(hosted, job, stream):
                _log_finished(rid, hosted.alias, event)
                yield convert.chunk_to_proto(event)

    async def Embed(
        self, request: gen_pb.EmbedRequest, context: aio.ServicerContext
    ) -> gen_pb.EmbedResponse:
        normalize = request.normalize if request.HasField("normalize") else True
        inputs = list(request.inputs)
        rid = request_id(context)
        with self._registry.lease(request.model) as hosted:
            if isinstance(hosted, SplitModel):
                reply: gen_pb.EmbedResponse = await hosted.relay_unary(
                    "Embed", request, _relay_metadata(rid)
                )
                return reply
            stream: EventStream[EmbeddingResult] = EventStream(asyncio.get_running_loop())
            job = await _off_loop_if_large(
                sum(len(t) for t in inputs),
                lambda: hosted.embedding_job(rid, inputs, normalize, stream),
            )
            (result,) = [r async for r in _run(hosted, job, stream)]
        return convert.embeddings_to_proto(result)

    async def Tokenize(
        self, request: gen_pb.TokenizeRequest, context: aio.ServicerContext
    ) -> gen_pb.TokenizeResponse:
        add_special = request.add_special if request.HasField("add_special") else True
        parse_special = request.parse_special if request.HasField("parse_special") else True
        with self._registry.lease(request.model) as hosted:
            if isinstance(hosted, SplitModel):
                tokenized: gen_pb.TokenizeResponse = await hosted.relay_unary(
                    "Tokenize", request, _relay_metadata(request_id(context))
                )
                return tokenized
            tokens = await _off_loop_if_large(
                len(request.text), lambda: hosted.tokenize(request.text, add_special, parse_special)
            )
            pieces = hosted.pieces(tokens) if request.with_pieces else []
        return gen_pb.TokenizeResponse(tokens=tokens, pieces=pieces)

    async def Detokenize(
        self, request: gen_pb.DetokenizeRequest, context: aio.ServicerContext
    ) -> gen_pb.DetokenizeResponse:
        tokens = list(request.tokens)
        with self._registry.lease(request.model) as hosted:
            if isinstance(hosted, SplitModel):
                detokenized: gen_pb.DetokenizeResponse = await hosted.relay_unary(
                    "Detokenize", request, _relay_metadata(request_id(context))
                )
                return detokenized
            text = await _off_loop_if_large(len(tokens), lambda: hosted.detokenize(tokens))
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


def _log_finished(rid: str, alias: str, event: GenerationEvent) -> None:
    if isinstance(event, Finished):
        u, t = event.usage, event.timings
        log.info(
            "request %s model=%s prompt=%d cached=%d completion=%d finish=%s "
            "ttft=%.1fms decode=%.1ftok/s",
            rid, alias, u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens,
            event.finish_reason.value, t.time_to_first_token_ms, t.decode_tokens_per_second,
        )  # fmt: skip
