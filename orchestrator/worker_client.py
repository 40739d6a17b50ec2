"""The control plane's client of the Worker API: one long-lived channel per worker address,
domain types in and out, and the project's own errors (common.errors) for every refusal.

This is the one place on the control-plane side where gRPC status codes become error kinds
(the inverse, kinds to codes, is common.grpc_errors), so the router and the placement
controller decide on kinds and never import grpc.

Channels are cheap to keep and costly to open (a TCP and HTTP/2 handshake on the request's
critical path), so they are opened on first use and closed when the worker leaves the view.
Keepalive pings notice a worker that vanished without closing its connections (power loss,
a cable) while a stream waits on it.

Every call carries the cluster token (`authorization: Bearer`, common.cluster_auth) when the
coordinator has one, which it always does when started by `llamaherd coordinator` or `up`:
workers with a token refuse calls without it. It goes in each call's metadata rather than
through a channel interceptor, which would add a hop to every streamed token.

The inference calls (Generate, Chat, Embed) carry the contract's messages unchanged: the
gateways already hold them (the gRPC front door relays the client's own request), and
converting every streamed chunk would cost a copy per token for nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as w_pb
from llamaherd.v1 import worker_pb2_grpc
from pydantic import SecretStr

from common.cluster_auth import auth_metadata
from common.cluster_secrets import TlsFiles
from common.cluster_tls import aio_channel
from common.grpc_errors import REQUEST_ID_KEY, error_from_rpc
from common.leases import Lease
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.wire.leases import lease_from_proto
from common.wire.models import estimate_from_proto, model_config_to_proto

M = TypeVar("M")
T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Fail a call at once when the worker is unreachable instead of waiting for it to
    # come back: the gateway then retries on another replica.
    ("grpc.enable_retries", 0),
]


async def _unary(call: Awaitable[T]) -> T:
    try:
        return await call
    except aio.AioRpcError as exc:
        raise error_from_rpc(exc) from exc


class WorkerStream(Generic[M]):
    """One server-streaming call: iterate for its messages; `cancel()` ends it from any task
    (the iteration then raises asyncio.CancelledError). A failure arrives as our error."""

    __slots__ = ("_call",)

    def __init__(self, call: aio.UnaryStreamCall) -> None:
        self._call = call

    def __aiter__(self) -> WorkerStream[M]:
        return self

    async def __anext__(self) -> M:
        try:
            message = await self._call.read()
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        if message is aio.EOF:
            raise StopAsyncIteration
        return message  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._call.cancel()


def _with_request_id(auth: Metadata, request_id: str | None) -> Metadata:
    return (*auth, (REQUEST_ID_KEY, request_id)) if request_id else auth


class WorkerClient:
    """The Worker API of one worker, as the control plane uses it.

    Every method raises common.errors kinds for a refusal or a failure (Unavailable when the
    worker cannot be reached). Timeouts are the caller's: it knows how long a load may take.
    Model settings are sent as far as the config sets them; the worker applies its own
    defaults to the rest (common.wire.models, only_set).
    """

    def __init__(self, address: str, channel: aio.Channel, token: SecretStr | None = None) -> None:
        self.address = address
        self._stub = worker_pb2_grpc.WorkerStub(channel)
        self._auth = auth_metadata(token)

    # ---- placement -----------------------------------------------------------------------
    async def estimate(self, config: ModelConfig, timeout: float | None = None) -> MemoryEstimate:
        """What loading `config` would need there, from the worker's own GGUF files."""
        request = w_pb.LoadModelRequest(spec=model_config_to_proto(config, only_set=True))
        return estimate_from_proto(
            await _unary(self._stub.EstimateModel(request, timeout=timeout, metadata=self._auth))
        )

    async def load(self, config: ModelConfig, timeout: float | None = None) -> None:
        """Loads `config`; returns once the model is ready there (its state then arrives
        with the worker's next report, like every other change)."""
        request = w_pb.LoadModelRequest(spec=model_config_to_proto(config, only_set=True))
        await _unary(self._stub.LoadModel(request, timeout=timeout, metadata=self._auth))

    async def unload(self, alias: str, timeout: float | None = None) -> None:
        request = w_pb.UnloadModelRequest(alias=alias)
        await _unary(self._stub.UnloadModel(request, timeout=timeout, metadata=self._auth))

    async def start_rpc_server(
        self, lease_id: str, head_host: str, reserve_bytes: int, timeout: float | None = None
    ) -> Lease:
        """Lends the worker's device to the head at `head_host` (the only peer admitted);
        the lease says where it listens, or why its server exited."""
        request = w_pb.StartRpcServerRequest(
            lease_id=lease_id, head_host=head_host, reserve_bytes=reserve_bytes
        )
        return lease_from_proto(
            await _unary(self._stub.StartRpcServer(request, timeout=timeout, metadata=self._auth))
        )

    async def stop_rpc_server(self, lease_id: str, timeout: float | None = None) -> None:
        """Stops a lease's RPC server; an unknown lease is not an error."""
        request = w_pb.StopRpcServerRequest(lease_id=lease_id)
        await _unary(self._stub.StopRpcServer(request, timeout=timeout, metadata=self._auth))

    # ---- inference (relayed by the gateways) ---------------------------------------------
    def generate(
        self, request: gen_pb.GenerateRequest, request_id: str | None = None
    ) -> WorkerStream[gen_pb.GenerationChunk]:
        return WorkerStream(
            self._stub.Generate(request, metadata=_with_request_id(self._auth, request_id))
        )

    def chat(
        self, request: gen_pb.ChatRequest, request_id: str | None = None
    ) -> WorkerStream[gen_pb.GenerationChunk]:
        return WorkerStream(
            self._stub.Chat(request, metadata=_with_request_id(self._auth, request_id))
        )

    async def embed(
        self, request: gen_pb.EmbedRequest, request_id: str | None = None
    ) -> gen_pb.EmbedResponse:
        return await _unary(
            self._stub.Embed(request, metadata=_with_request_id(self._auth, request_id))
        )

    async def tokenize(
        self, request: gen_pb.TokenizeRequest, request_id: str | None = None
    ) -> gen_pb.TokenizeResponse:
        return await _unary(
            self._stub.Tokenize(request, metadata=_with_request_id(self._auth, request_id))
        )


def insecure_channel(address: str) -> aio.Channel:
    """A channel with the options above; workers listen without TLS on the cluster network."""
    return aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def secure_channel(address: str, tls: TlsFiles) -> aio.Channel:
    """A mutual-TLS channel with the options above, for a cluster with certificates."""
    return aio_channel(address, tls, CHANNEL_OPTIONS)


class WorkerClients:
    """One client, over one long-lived channel, per worker address: `client(address)` is
    the factory the router and the placement controller take. `connect` opens a channel
    (mutual TLS with `tls`); `token`, the cluster's join token, goes with every call."""

    def __init__(
        self,
        connect: Callable[[str], aio.Channel] = insecure_channel,
        token: SecretStr | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        if tls is not None:
            connect = functools.partial(secure_channel, tls=tls)
        self._connect = connect
        self._token = token
        self._clients: dict[str, tuple[aio.Channel, WorkerClient]] = {}

    def client(self, address: str) -> WorkerClient:
        entry = self._clients.get(address)
        if entry is None:
            channel = self._connect(address)
            entry = (channel, WorkerClient(address, channel, self._token))
            self._clients[address] = entry
        return entry[1]

    async def keep_only(self, addresses: Iterable[str]) -> None:
        """Closes the channels of workers no longer in the cluster."""
        wanted = set(addresses)
        for address in [a for a in self._clients if a not in wanted]:
            channel, _ = self._clients.pop(address)
            await channel.close(grace=None)

    async def close(self) -> None:
        await self.keep_only(())
