"""A stand-in worker that answers at once, for measuring what a gateway itself costs.

Used only by tests/bench/bench_gateway_capacity.py. One asyncio process with two faces on
the same answer (a few fixed tokens, no model):

- gRPC: the Worker service's Generate and Chat (everything else is UNIMPLEMENTED), plus a
  Heartbeat stream to a real coordinator that registers it as a node holding one READY
  model, so the real registry, routing and gateway send it requests;
- HTTP: OpenAI's /v1/chat/completions (non-streaming and SSE), for proxies that speak
  OpenAI to their backends (LiteLLM) and for calling the stand-in directly.

    python tests/bench/standin_worker.py --host 127.0.0.1 --grpc-port P --http-port Q \\
        [--coordinator HOST:PORT --node-id standin] [--model bench] [--tokens 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from grpc import aio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llamaherd.v1 import cluster_pb2 as cl_pb  # noqa: E402
from llamaherd.v1 import cluster_pb2_grpc, worker_pb2_grpc  # noqa: E402
from llamaherd.v1 import generation_pb2 as gen_pb  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from common.cluster_auth import NODE_KEY_KEY, auth_metadata  # noqa: E402
from common.cluster_secrets import TOKEN_ENV, node_key  # noqa: E402
from common.hardware import HardwareInfo  # noqa: E402
from common.model_settings import ModelConfig  # noqa: E402
from common.net import join_host_port  # noqa: E402
from common.status import EngineFigures, ModelState, ModelStatus, NodeStatus  # noqa: E402
from common.wire.status import node_status_to_report  # noqa: E402

log = logging.getLogger("standin")
WORDS = ("Once", " upon", " a", " time", " there", " was", " a", " stand", "-in", ".")
# As many slots as the load generator has clients: routing sees a node with room, never a
# queue (the stand-in answers at once, so it has no real queue to report).
SLOTS = 256


class StandIn(worker_pb2_grpc.WorkerServicer):  # type: ignore[misc]
    """Generate and Chat: `tokens` tokens in one chunk, then the final chunk."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.text = "".join(WORDS[i % len(WORDS)] for i in range(tokens))

    def chunks(self) -> list[gen_pb.GenerationChunk]:
        usage = gen_pb.Usage(prompt_tokens=8, completion_tokens=self.tokens)
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return [
            gen_pb.GenerationChunk(text=self.text, token_ids=list(range(1, self.tokens + 1))),
            gen_pb.GenerationChunk(finish_reason=gen_pb.FINISH_REASON_LENGTH, usage=usage),
        ]

    async def Generate(
        self, request: gen_pb.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        for chunk in self.chunks():
            yield chunk

    async def Chat(
        self, request: gen_pb.ChatRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        for chunk in self.chunks():
            yield chunk


def openai_app(standin: StandIn, model: str) -> Starlette:
    """The same answer as OpenAI's chat completions (what LiteLLM sends a backend)."""

    def completion(stream: bool) -> dict[str, Any]:
        created = int(time.time())
        base: dict[str, Any] = {"id": "chatcmpl-standin", "created": created, "model": model}
        if stream:
            return base
        return {
            **base, "object": "chat.completion",
            "choices": [{
                "index": 0, "finish_reason": "length",
                "message": {"role": "assistant", "content": standin.text},
            }],
            "usage": {"prompt_tokens": 8, "completion_tokens": standin.tokens,
                      "total_tokens": 8 + standin.tokens},
        }  # fmt: skip

    async def chat(request: Request) -> Response:
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse(completion(False))
        base = {**completion(True), "object": "chat.completion.chunk"}
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                          "content": standin.text}}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        ]  # fmt: skip
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return StreamingResponse(iter([payload]), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


def node_status(node_id: str, address: str, model: str) -> NodeStatus:
    """A node holding `model` READY with room for every client."""
    config = ModelConfig(alias=model, path=f"/standin/{model}.gguf", n_ctx=4096)
    loaded = ModelStatus(
        alias=model, config=config, state=ModelState.READY,
        engine=EngineFigures(slots_total=SLOTS, decode_tps=1000.0, prompt_tps=10000.0),
    )  # fmt: skip
    hardware = HardwareInfo(kind="x86-cpu", backends=("CPU",), reference_decode_tps=1000.0)
    return NodeStatus(
        node_id=node_id, address=address, hardware=hardware, models=(loaded,),
        memory_free=8 << 30, version="standin",
    )  # fmt: skip


async def heartbeat(
    coordinator: str, status: NodeStatus, token: SecretStr | None, keys: Path
) -> None:
    """Registers with the coordinator and reports every 0.5 s, reconnecting when it drops;
    its node key is kept in `keys`."""
    metadata = (*auth_metadata(token), (NODE_KEY_KEY, node_key(keys, status.node_id)))

    async def reports() -> AsyncIterator[cl_pb.NodeReport]:
        sequence = 0
        while True:
            yield node_status_to_report(status, sequence)
            sequence += 1
            await asyncio.sleep(0.5)

    while True:
        try:
            async with aio.insecure_channel(coordinator) as channel:
                stub = cluster_pb2_grpc.CoordinatorStub(channel)
                async for reply in stub.Heartbeat(reports(), metadata=metadata):
                    if reply.error:
                        log.error("the coordinator refused the stand-in: %s", reply.error)
        except aio.AioRpcError as exc:
            log.warning("coordinator %s: %s; retrying", coordinator, exc.code().name)
        await asyncio.sleep(0.5)


async def serve(args: argparse.Namespace) -> None:
    standin = StandIn(args.tokens)
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    worker_pb2_grpc.add_WorkerServicer_to_server(standin, server)
    address = join_host_port(args.host, args.grpc_port)
    server.add_insecure_port(address)
    await server.start()
    config = uvicorn.Config(
        openai_app(standin, args.model), host=args.host, port=args.http_port,
        log_level="warning", access_log=False, lifespan="off",
    )  # fmt: skip
    http = uvicorn.Server(config)
    tasks = [asyncio.ensure_future(http.serve())]
    if args.coordinator:
        secret = os.environ.get(TOKEN_ENV)
        token = SecretStr(secret) if secret else None
        status = node_status(args.node_id, address, args.model)
        keys = args.key_dir or Path(tempfile.mkdtemp(prefix="standin-key-"))
        tasks.append(asyncio.ensure_future(heartbeat(args.coordinator, status, token, keys)))
    print(f"stand-in serving gRPC on {address} and HTTP on port {args.http_port}", flush=True)
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(grpc.RpcError):
            await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--coordinator", default="", help="registry HOST:PORT to register with")
    parser.add_argument("--node-id", default="standin")
    parser.add_argument(
        "--key-dir", type=Path, help="where its node key goes (default: a new temp dir)"
    )
    parser.add_argument("--model", default="bench")
    parser.add_argument("--tokens", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
