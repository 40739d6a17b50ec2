"""A device lent to a split model's head, as the worker reports it and the coordinator
keeps it (one type for both sides; its wire form, RpcServerInfo, is in common.wire.leases)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    lease_id: str
    endpoint: str  # host:port the head connects to
    head_host: str  # the only address the server admits
    device: str = "CPU"
    reserved_bytes: int = 0
    running: bool = True
    error: str = ""  # why the server exited
    guard: str = ""  # how only the head is admitted: "bpf" or "forwarder" ("" if unknown)
