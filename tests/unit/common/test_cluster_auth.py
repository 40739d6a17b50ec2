"""The join token: its file, and the interceptor that refuses calls without it, over a real
in-process gRPC server (every call shape, the health service left open)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import SecretStr

from common.cluster_auth import (
    REFUSAL,
    ClusterTokenInterceptor,
    aio_interceptors,
    auth_metadata,
    sync_channel,
)
from common.cluster_secrets import ensure_token_file, node_key, read_token_file, resolve_token
from common.settings import ConfigError

TOKEN = SecretStr("s3cret-token")
SERVICE = "test.Echo"
T = TypeVar("T")


def _identity(b: bytes) -> bytes:
    return b


async def _unary(request: bytes, context: aio.ServicerContext) -> bytes:
    return request


async def _server_stream(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
    yield request
    yield request


async def _client_stream(requests: AsyncIterator[bytes], context: aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


async def _bidi(
    requests: AsyncIterator[bytes], context: aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def _echo_service() -> grpc.GenericRpcHandler:
    kinds = {"Unary": (grpc.unary_unary_rpc_method_handler, _unary),
             "ServerStream": (grpc.unary_stream_rpc_method_handler, _server_stream),
             "ClientStream": (grpc.stream_unary_rpc_method_handler, _client_stream),
             "Bidi": (grpc.stream_stream_rpc_method_handler, _bidi)}  # fmt: skip
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {name: make(fn, _identity, _identity) for name, (make, fn) in kinds.items()},
    )


@asynccontextmanager
async def serving() -> AsyncIterator[str]:
    """An echo service of every call shape and the health service, behind the token."""
    server = aio.server(interceptors=[ClusterTokenInterceptor(TOKEN)])
    server.add_generic_rpc_handlers((_echo_service(),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def with_server(client: Callable[[str], T]) -> T:
    """Runs the (blocking) `client` against a fresh server; returns what it returned."""

    async def scenario() -> T:
        async with serving() as address:
            return await asyncio.to_thread(client, address)

    return asyncio.run(scenario())


# ---- the file ----------------------------------------------------------------------------------
def test_a_missing_token_file_is_created_0600_in_a_0700_folder(tmp_path: Path) -> None:
    path = tmp_path / "config" / "llamaherd" / "cluster-token"
    token = ensure_token_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert len(token.get_secret_value()) >= 40, "256 random bits"
    assert ensure_token_file(path) == token, "an existing file is kept, not regenerated"
    assert ensure_token_file(tmp_path / "other") != token


def test_the_token_given_outright_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token(None, path) == SecretStr("from-file")
    assert resolve_token(SecretStr(" from-env "), path) == SecretStr("from-env")
    assert resolve_token(None, None) is None


def test_an_unreadable_or_empty_token_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read secret file .*missing"):
        read_token_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token_file(tmp_path / "empty")


def test_each_node_id_gets_its_own_stable_key(tmp_path: Path) -> None:
    first = node_key(tmp_path / "keys", "node-a")
    assert node_key(tmp_path / "keys", "node-a") == first
    assert node_key(tmp_path / "keys", "node-b") != first
    assert stat.S_IMODE((tmp_path / "keys" / "node-a").stat().st_mode) == 0o600


# ---- the interceptor ---------------------------------------------------------------------------
def _calls(channel: grpc.Channel, metadata: Any = ()) -> dict[str, Any]:
    """One call of each shape; the value or the error each gave."""
    shapes = {
        "Unary": lambda: channel.unary_unary(f"/{SERVICE}/Unary")(b"x", metadata=metadata),
        "ServerStream": lambda: list(
            channel.unary_stream(f"/{SERVICE}/ServerStream")(b"x", metadata=metadata)
        ),
        "ClientStream": lambda: channel.stream_unary(f"/{SERVICE}/ClientStream")(
            iter([b"x", b"y"]), metadata=metadata
        ),
        "Bidi": lambda: list(
            channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"x"]), metadata=metadata)
        ),
    }
    results: dict[str, Any] = {}
    for name, call in shapes.items():
        try:
            results[name] = call()
        except grpc.RpcError as exc:
            results[name] = exc
    return results


@pytest.mark.parametrize("sent", [None, "Bearer wrong-token", "s3cret-token", "Basic s3cret"])
def test_every_call_without_the_right_token_is_unauthenticated(sent: str | None) -> None:
    metadata = () if sent is None else (("authorization", sent),)

    def call(address: str) -> dict[str, Any]:
        with grpc.insecure_channel(address) as channel:
            return _calls(channel, metadata)

    for name, result in with_server(call).items():
        assert isinstance(result, grpc.RpcError), name
        assert result.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert result.details() == REFUSAL, "the refusal never echoes what was sent"


def test_the_sync_channel_helper_sends_the_token_on_every_shape() -> None:
    def call(address: str) -> dict[str, Any]:
        with sync_channel(address, TOKEN) as channel:
            return _calls(channel)

    assert with_server(call) == {
        "Unary": b"x", "ServerStream": [b"x", b"x"], "ClientStream": b"xy", "Bidi": [b"x"],
    }  # fmt: skip


def test_health_answers_without_a_token() -> None:
    def check(address: str) -> int:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return int(stub.Check(health_pb2.HealthCheckRequest()).status)

    assert with_server(check) == health_pb2.HealthCheckResponse.SERVING


def test_the_async_helpers_send_the_token_on_every_shape() -> None:
    async def requests() -> AsyncIterator[bytes]:
        yield b"x"
        yield b"y"

    async def scenario() -> tuple[list[Any], bytes]:
        async with serving() as address:
            async with aio.insecure_channel(
                address, interceptors=aio_interceptors(TOKEN)
            ) as channel:
                extra = (("llamaherd-request-id", "r1"),)  # the caller's own metadata stays
                shapes = [
                    await channel.unary_unary(f"/{SERVICE}/Unary")(b"x", metadata=extra),
                    [m async for m in channel.unary_stream(f"/{SERVICE}/ServerStream")(b"x")],
                    await channel.stream_unary(f"/{SERVICE}/ClientStream")(requests()),
                    [m async for m in channel.stream_stream(f"/{SERVICE}/Bidi")(requests())],
                ]
            async with aio.insecure_channel(address) as channel:
                by_metadata = await channel.unary_unary(f"/{SERVICE}/Unary")(
                    b"m", metadata=auth_metadata(TOKEN)
                )
        return shapes, by_metadata

    assert asyncio.run(scenario()) == ([b"x", [b"x", b"x"], b"xy", [b"x", b"y"]], b"m")
