"""A synchronous gRPC client that owns its channel: the base of the worker and gateway clients."""

from __future__ import annotations

from typing import TypeVar

import grpc
from pydantic import SecretStr

from common.cluster_auth import sync_channel
from common.cluster_tls import TlsFiles

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


_C = TypeVar("_C", bound="ChannelClient")


class ChannelClient:
    """Owns one channel to `address`; a context manager that closes it. With the cluster's
    join `token`, every call carries it (what a worker with a token requires); with `tls`
    (common.cluster_tls), the channel is mutual TLS."""

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        token: SecretStr | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel: grpc.Channel = sync_channel(address, token, CHANNEL_OPTIONS, tls)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
