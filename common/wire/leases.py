"""Leases (common.leases) to and from their wire form, RpcServerInfo."""

from __future__ import annotations

import dataclasses

from llamaherd.v1 import worker_pb2 as w_pb

from common.leases import Lease


def lease_to_proto(lease: Lease, memory_free: int = 0) -> w_pb.RpcServerInfo:
    return w_pb.RpcServerInfo(**dataclasses.asdict(lease), memory_free_bytes=memory_free)


def lease_from_proto(info: w_pb.RpcServerInfo) -> Lease:
    return Lease(**{field.name: getattr(info, field.name) for field in dataclasses.fields(Lease)})
