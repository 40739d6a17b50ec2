"""What every HTTP front door (the OpenAI API, the Ollama API) does the same way: read a
JSON body within its limits, open a generation on a worker (or its continuation on
another), wait for the first chunk before answering, and cancel the work of a client that
went away. Each API only translates shapes (openai_schema, ollama_schema).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeAlias, TypeVar

from llamaherd.v1 import generation_pb2 as gen_pb
from starlette.requests import Request

from common.errors import Internal
from orchestrator.cluster.types import NodeId
from orchestrator.gateway.json_body import parse_json, read_body
from orchestrator.gateway.route_requests import continued
from orchestrator.gateway.router import Completed, OpenGeneration, Progress
from orchestrator.worker_client import WorkerClient, WorkerStream

NODE_HEADER = "x-llamaherd-node"
RETRIED_HEADER = "x-llamaherd-retried-from"
# A token stream's headers besides its node: never cached, never buffered by a proxy (nginx).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_GONE = 499  # nginx's "client closed request": never sent, only logged
Chunks = AsyncGenerator[tuple[NodeId, gen_pb.GenerationChunk], None]
GenerationRequest: TypeAlias = gen_pb.GenerateRequest | gen_pb.ChatRequest
T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected before its response started."""


async def json_body(request: Request, timeout_s: float) -> Any:
    """The request's JSON body, read within `timeout_s` and json_body's limits."""
    length = request.headers.get("content-length")
    declared = int(length) if length and length.isdigit() else None
    raw = await read_body(request.stream(), declared, timeout_s)
    return parse_json(raw)


def open_generation(generation: GenerationRequest, rid: str | None) -> OpenGeneration:
    """Opens `generation` on a worker, or its continuation after what was already sent."""

    def open_call(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
        request = continued(generation, sent.text, sent.tokens)
        if isinstance(request, gen_pb.ChatRequest):
            return worker.chat(request, rid)
        return worker.generate(request, rid)

    return open_call


async def first_chunk(request: Request, chunks: Chunks) -> tuple[NodeId, gen_pb.GenerationChunk]:
    """The stream's first chunk, which decides the status code: errors before it are real
    HTTP errors. The stream is closed when this fails."""
    try:
        return await unless_gone(request, anext(chunks))
    except StopAsyncIteration:
        raise Internal("the worker ended the stream without a result") from None
    except BaseException:
        await chunks.aclose()
        raise


async def next_chunk(chunks: Chunks, node: NodeId) -> tuple[NodeId, gen_pb.GenerationChunk | None]:
    """The stream's next chunk; None at its end."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return node, None


def completed_headers(completed: Completed) -> dict[str, str]:
    """The node that produced a whole reply, and those that failed it first."""
    headers: dict[str, str] = {NODE_HEADER: completed.node}
    if completed.retried_from:
        headers[RETRIED_HEADER] = ",".join(completed.retried_from)
    return headers


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled (ClientGone raised) when the client disconnects first.

    Starlette reads nothing from the client while a handler runs, so without this a
    non-streaming client that gives up leaves its generation running to the end. Once the
    body is read, the only message the server can still receive is the disconnection."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # our client left, or we are cancelled ourselves
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def request_id(request: Request) -> str | None:
    """The client's x-request-id, passed on to the worker; None lets the worker make one."""
    rid = request.headers.get("x-request-id", "")
    return rid if 0 < len(rid) <= 128 else None
