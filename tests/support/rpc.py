"""Small helpers for calling the Worker API in tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2_grpc

TIMEOUT = 120.0


@dataclass
class Completion:
    text: str
    chunks: list[gen_pb.GenerationChunk]

    @property
    def final(self) -> gen_pb.GenerationChunk:
        return self.chunks[-1]

    @property
    def token_ids(self) -> list[int]:
        return [t for c in self.chunks for t in c.token_ids]


def collect(stream: Any) -> Completion:
    chunks = list(stream)
    return Completion("".join(c.text for c in chunks), chunks)


def generate(
    stub: worker_pb2_grpc.WorkerStub,
    model: str,
    prompt: str,
    constraint: gen_pb.OutputConstraint | None = None,
    **sampling: Any,
) -> Completion:
    request = gen_pb.GenerateRequest(
        model=model,
        prompt=prompt,
        sampling=gen_pb.SamplingParams(**sampling),
        constraint=constraint,
    )
    return collect(stub.Generate(request, timeout=TIMEOUT))


def chat(
    stub: worker_pb2_grpc.WorkerStub,
    model: str,
    messages: Sequence[tuple[str, str]],
    **sampling: Any,
) -> Completion:
    request = gen_pb.ChatRequest(
        model=model,
        messages=[gen_pb.ChatMessage(role=r, content=c) for r, c in messages],
        sampling=gen_pb.SamplingParams(**sampling),
    )
    return collect(stub.Chat(request, timeout=TIMEOUT))


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """Runs `call` (draining a stream) and returns the RpcError it must raise."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes)):
            list(result)
    return info.value
