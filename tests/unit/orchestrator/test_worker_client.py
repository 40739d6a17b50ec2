"""The control plane's worker client over a stand-in gRPC channel: what each call puts on the
wire, what comes back as our types, and which error kind a worker's status becomes.

The stand-in replaces grpc's channel (the library boundary): requests and replies still go
through the generated stubs' serializers, as bytes, like on a real connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as w_pb

from common.errors import ErrorKind, LlamaherdError
from common.grpc_errors import CODES, error_from_status
from common.leases import Lease
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from orchestrator.config import CatalogEntry
from orchestrator.worker_client import WorkerClient, WorkerClients

Reply = Any  # a message, a list of messages (a stream), or an AioRpcError to end with


def rpc_error(code: grpc.StatusCode, details: str = "") -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details=details)


class FakeStreamCall:
    """A server-streaming call: the messages, then EOF or the error; cancel() as grpc's."""

    def __init__(self, messages: list[bytes], error: aio.AioRpcError | None, decode: Any) -> None:
        self._messages, self._error, self._decode = messages, error, decode
        self.cancelled = False

    async def read(self) -> Any:
        if self.cancelled:
            raise asyncio.CancelledError
        if self._messages:
            return self._decode(self._messages.pop(0))
        if self._error is not None:
            raise self._error
        return aio.EOF

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeChannel:
    """grpc.aio.Channel as the generated stub uses it: records (method, request, timeout,
    metadata) per call and answers with `replies[method]`."""

    def __init__(self, **replies: Reply) -> None:
        self.replies = replies
        self.calls: list[tuple[str, Any, float | None, Any]] = []
        self.streams: list[FakeStreamCall] = []
        self.closed = False

    def _record(self, method: str, encode: Any, decode: Any, request: Any, **kw: Any) -> Reply:
        name = method.rsplit("/", 1)[-1]
        sent = type(request).FromString(encode(request))
        self.calls.append((name, sent, kw.get("timeout"), kw.get("metadata")))
        return self.replies[name]

    def unary_unary(
        self, method: str, request_serializer: Any, response_deserializer: Any, **_: Any
    ) -> Callable[..., Any]:
        async def call(request: Any, **kw: Any) -> Any:
            reply = self._record(method, request_serializer, response_deserializer, request, **kw)
            if isinstance(reply, aio.AioRpcError):
                raise reply
            return response_deserializer(reply.SerializeToString())

        return call

    def unary_stream(
        self, method: str, request_serializer: Any, response_deserializer: Any, **_: Any
    ) -> Callable[..., FakeStreamCall]:
        def call(request: Any, **kw: Any) -> FakeStreamCall:
            reply = self._record(method, request_serializer, response_deserializer, request, **kw)
            error = reply[-1] if reply and isinstance(reply[-1], aio.AioRpcError) else None
            messages = [m.SerializeToString() for m in (reply[:-1] if error else reply)]
            self.streams.append(FakeStreamCall(messages, error, response_deserializer))
            return self.streams[-1]

        return call

    def stream_unary(self, *args: Any, **kwargs: Any) -> None:
        return None

    stream_stream = stream_unary

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


def client(**replies: Reply) -> tuple[WorkerClient, FakeChannel]:
    channel = FakeChannel(**replies)
    return WorkerClient("w:50051", channel), channel  # type: ignore[arg-type]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- status codes ----------------------------------------------------------------------


def test_each_status_the_worker_sends_comes_back_as_the_kind_it_raised() -> None:
    # common.grpc_errors maps kinds to codes on the worker; this is the way back.
    for kind, code in CODES.items():
        error = error_from_status(code, "why")
        assert (error.kind, error.message) == (kind, "why")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, ErrorKind.UNAVAILABLE),
        (grpc.StatusCode.CANCELLED, ErrorKind.UNAVAILABLE),
        (grpc.StatusCode.OUT_OF_RANGE, ErrorKind.INVALID_ARGUMENT),
        (grpc.StatusCode.UNKNOWN, ErrorKind.INTERNAL),
        (grpc.StatusCode.DATA_LOSS, ErrorKind.INTERNAL),
    ],
)
def test_codes_only_grpc_produces_have_a_kind_too(code: grpc.StatusCode, kind: ErrorKind) -> None:
    error = error_from_status(code, None)
    assert (error.kind, error.message) == (kind, code.name)  # no details: the code's name


# ---- placement calls -------------------------------------------------------------------


def test_estimate_sends_only_the_settings_given_and_returns_our_estimate() -> None:
    reply = w_pb.MemoryEstimate(
        weights_bytes=1, kv_cache_bytes=2, compute_bytes=3, total_bytes=6, n_layers=4
    )
    worker, channel = client(EstimateModel=reply)
    entry = CatalogEntry(alias="m", path="/m.gguf", n_ctx=2048, replicas=2)
    estimate = run(worker.estimate(entry.load_settings(), timeout=10.0))
    assert estimate == MemoryEstimate(1, 2, 3, n_layers=4)
    ((method, request, timeout, _),) = channel.calls
    assert (method, timeout) == ("EstimateModel", 10.0)
    assert (request.spec.alias, request.spec.path, request.spec.n_ctx) == ("m", "/m.gguf", 2048)
    # Unset: the worker applies its own defaults (its cores for n_threads).
    assert not request.spec.HasField("n_threads") and not request.spec.HasField("n_batch")


def test_load_sends_the_settings_and_its_timeout() -> None:
    worker, channel = client(LoadModel=w_pb.LoadModelResponse())
    config = ModelConfig(alias="m", path="/m.gguf", rpc_servers=("b:50100",), n_gpu_layers=9)
    assert run(worker.load(config, timeout=600.0)) is None
    ((method, request, timeout, _),) = channel.calls
    assert (method, timeout) == ("LoadModel", 600.0)
    assert list(request.spec.rpc_servers) == ["b:50100"] and request.spec.n_gpu_layers == 9


def test_a_refused_load_raises_the_workers_kind_and_message() -> None:
    refusal = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "needs 2.0 GiB, has 1.0 GiB")
    worker, _ = client(LoadModel=refusal)
    with pytest.raises(LlamaherdError) as err:
        run(worker.load(ModelConfig(alias="m", path="/m.gguf")))
    assert err.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert err.value.message == "needs 2.0 GiB, has 1.0 GiB"


def test_an_unreachable_worker_is_unavailable() -> None:
    worker, _ = client(UnloadModel=rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect"))
    with pytest.raises(LlamaherdError) as err:
        run(worker.unload("m", timeout=60.0))
    assert (err.value.kind, err.value.message) == (ErrorKind.UNAVAILABLE, "failed to connect")


def test_lending_returns_the_lease_the_worker_started() -> None:
    info = w_pb.RpcServerInfo(
        lease_id="m@a", endpoint="b:50100", head_host="10.0.0.1", device="CUDA0",
        reserved_bytes=7, running=True, memory_free_bytes=99,
    )  # fmt: skip
    worker, channel = client(StartRpcServer=info)
    lease = run(worker.start_rpc_server("m@a", "10.0.0.1", 7, timeout=30.0))
    assert lease == Lease("m@a", "b:50100", "10.0.0.1", device="CUDA0", reserved_bytes=7)
    ((_, request, timeout, _),) = channel.calls
    assert (request.lease_id, request.head_host, request.reserve_bytes) == ("m@a", "10.0.0.1", 7)
    assert timeout == 30.0


def test_stopping_a_lease_sends_its_id() -> None:
    worker, channel = client(StopRpcServer=w_pb.StopRpcServerResponse())
    run(worker.stop_rpc_server("m@a", timeout=60.0))
    ((method, request, timeout, _),) = channel.calls
    assert (method, request.lease_id, timeout) == ("StopRpcServer", "m@a", 60.0)


# ---- inference relays ------------------------------------------------------------------

REQUEST = gen_pb.GenerateRequest(model="m", prompt="Hello")


async def _read_all(stream: Any) -> list[str]:
    return [chunk.text async for chunk in stream]


def test_a_stream_yields_the_workers_chunks_and_passes_the_request_id_on() -> None:
    chunks = [gen_pb.GenerationChunk(text="Hi"), gen_pb.GenerationChunk(text=" there")]
    worker, channel = client(Generate=chunks, Chat=chunks)
    assert run(_read_all(worker.generate(REQUEST, request_id="r-1"))) == ["Hi", " there"]
    chat = gen_pb.ChatRequest(model="m", messages=[gen_pb.ChatMessage(role="user", content="x")])
    assert run(_read_all(worker.chat(chat))) == ["Hi", " there"]
    (_, sent, _, metadata), (method, _, _, no_id) = channel.calls
    assert sent == REQUEST and metadata == (("x-request-id", "r-1"),)
    assert (method, no_id) == ("Chat", ())  # none given: the worker makes one


def test_a_stream_that_fails_midway_raises_the_kind_after_the_chunks_before() -> None:
    lost = rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    worker, _ = client(Generate=[gen_pb.GenerationChunk(text="Hi"), lost])
    received: list[str] = []

    async def read() -> None:
        async for chunk in worker.generate(REQUEST):
            received.append(chunk.text)

    with pytest.raises(LlamaherdError) as err:
        run(read())
    assert received == ["Hi"]
    assert (err.value.kind, err.value.message) == (ErrorKind.UNAVAILABLE, "Socket closed")


def test_cancel_ends_a_stream_from_outside() -> None:
    worker, channel = client(Generate=[gen_pb.GenerationChunk(text="Hi")] * 3)

    async def read() -> list[str]:
        stream = worker.generate(REQUEST)
        texts = []
        async for chunk in stream:
            texts.append(chunk.text)
            stream.cancel()
        return texts

    with pytest.raises(asyncio.CancelledError):
        run(read())
    assert channel.streams[0].cancelled


def test_embed_returns_the_workers_reply() -> None:
    reply = gen_pb.EmbedResponse(embeddings=[gen_pb.Embedding(values=[0.5])], prompt_tokens=2)
    worker, channel = client(Embed=reply)
    request = gen_pb.EmbedRequest(model="m", inputs=["x"])
    assert run(worker.embed(request, request_id="r-2")) == reply
    assert channel.calls[0][3] == (("x-request-id", "r-2"),)


# ---- one channel per worker ------------------------------------------------------------


def test_one_client_per_address_and_channels_of_departed_workers_closed() -> None:
    opened: dict[str, FakeChannel] = {}

    def connect(address: str) -> FakeChannel:
        opened[address] = FakeChannel()
        return opened[address]

    async def scenario() -> None:
        clients = WorkerClients(connect)  # type: ignore[arg-type]
        a = clients.client("a:50051")
        assert clients.client("a:50051") is a and a.address == "a:50051"
        clients.client("b:50051")
        await clients.keep_only(["b:50051"])
        assert opened["a:50051"].closed and not opened["b:50051"].closed
        assert clients.client("a:50051") is not a  # a worker back at the address: a new one
        await clients.close()
        assert all(channel.closed for channel in opened.values())

    run(scenario())
