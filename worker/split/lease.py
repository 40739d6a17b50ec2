"""A device lent to a split model's head, as the worker reports it and the coordinator
keeps it (one type for both sides, and its one wire form, RpcServerInfo)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llamaherd.v1 import worker_pb2 as w_pb


@dataclass(frozen=True)
class Lease:
    lease_id: str
    endpoint: str  # host:port the head connects to
    head_host: str  # the only address the server admits
    device: str = "CPU"
    reserved_bytes: int = 0
    running: bool = True
    error: str = ""  # why the server exited


def lease_to_proto(lease: Lease, memory_free: int = 0) -> w_pb.RpcServerInfo:
    return w_pb.RpcServerInfo(**dataclasses.asdict(lease), memory_free_bytes=memory_free)


def lease_from_proto(info: w_pb.RpcServerInfo) -> Lease:
    return Lease(**{field.name: getattr(info, field.name) for field in dataclasses.fields(Lease)})
