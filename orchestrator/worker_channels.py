"""Channels from the control plane (gateways, placement) to the workers: one long-lived gRPC
channel per worker address.

Channels are cheap to keep and costly to open (a TCP and HTTP/2 handshake on the request's
critical path), so they are opened on first use and closed when the worker leaves the view.
Keepalive pings notice a worker that vanished without closing its connections (power loss,
a cable) while a stream waits on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from grpc import aio
from llamaherd.v1 import worker_pb2_grpc

log = logging.getLogger(__name__)

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


class WorkerChannels:
    def __init__(self) -> None:
        self._channels: dict[str, tuple[aio.Channel, worker_pb2_grpc.WorkerStub]] = {}

    def stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        entry = self._channels.get(address)
        if entry is None:
            channel = aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            entry = (channel, worker_pb2_grpc.WorkerStub(channel))
            self._channels[address] = entry
        return entry[1]

    async def keep_only(self, addresses: Iterable[str]) -> None:
        """Closes the channels of workers no longer in the cluster."""
        wanted = set(addresses)
        for address in [a for a in self._channels if a not in wanted]:
            channel, _ = self._channels.pop(address)
            await channel.close(grace=None)

    async def close(self) -> None:
        await self.keep_only(())
