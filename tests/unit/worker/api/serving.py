"""A Worker gRPC service in this process, for the servicer's unit tests: a real grpc.aio
server on loopback over a registry that builds real LocalModels on the fake llama.cpp
backend (tests/support/fake_model.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2_grpc
from support.fake_model import FakeModels
from support.gguf_files import write_gguf

from common.grpc_errors import ErrorInterceptor
from common.memory import GiB
from common.model_settings import ModelConfig
from worker.api.servicer import WorkerServicer
from worker.config import WorkerSettings
from worker.models.estimate import MemoryBudget
from worker.models.registry import ModelRegistry
from worker.models.served import ModelFacts, OnLost, ServedModel

TEMPLATE = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"


async def no_split(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
    raise AssertionError("no split models here")


@dataclass
class Worker:
    registry: ModelRegistry
    models: FakeModels
    stub: Any  # worker_pb2_grpc.WorkerStub over a grpc.aio channel
    address: str
    server: aio.Server


@asynccontextmanager
async def serving(
    tmp_path: Path,
    *configs: dict[str, Any],
    split: Callable[[ModelConfig, ModelFacts, OnLost], Awaitable[ServedModel]] = no_split,
) -> AsyncIterator[Worker]:
    """A worker's gRPC service on a free loopback port, its models loaded from `configs`."""
    path = tmp_path / "tiny.gguf"
    if not path.exists():
        write_gguf(path, context_length=256)
    models = FakeModels()
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    registry = ModelRegistry(WorkerSettings(model_dirs=(tmp_path,)), budget, models, split)
    for settings in configs:
        spec = {"path": str(path), "n_ctx": 128, "n_batch": 64, "n_parallel": 1, **settings}
        await registry.load(ModelConfig(**spec))
    server = aio.server(interceptors=[ErrorInterceptor()])
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerServicer(registry), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(address)
    try:
        yield Worker(registry, models, worker_pb2_grpc.WorkerStub(channel), address, server)
    finally:
        await channel.close()
        await server.stop(0)
        await registry.close_all()


def generate_request(prompt: str, model: str = "m", **sampling: Any) -> gen_pb.GenerateRequest:
    return gen_pb.GenerateRequest(
        model=model, prompt=prompt, sampling=gen_pb.SamplingParams(**sampling)
    )


async def refusal(call: Any) -> aio.AioRpcError:
    """The error a unary call or a whole stream ends with."""
    with pytest.raises(aio.AioRpcError) as error:
        if hasattr(call, "read"):  # a stream (read, not iterated: it may have been read)
            while await call.read() is not aio.EOF:
                pass
        else:
            await call
    return error.value


async def rest(call: Any) -> list[gen_pb.GenerationChunk]:
    """What remains of a stream that has been read from."""
    chunks = []
    while (chunk := await call.read()) is not aio.EOF:
        chunks.append(chunk)
    return chunks


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
