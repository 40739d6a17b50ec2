"""Forged registrations: heartbeats an attacker who reaches the registry port can send.

A forgery copies a live node's report from the public cluster status (as an attacker
would), points its address at a black hole (a port that accepts connections and never
answers: requests routed there hang) and claims a much higher speed, so that routing would
prefer it. It is sent with no token, a wrong token, and under a live node's id (no token,
and the real token without that node's key: an insider). Each must be refused.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import cluster_pb2_grpc

ACCEPTED, REFUSED = "accepted", "refused"


class BlackHole:
    """A loopback port that accepts connections and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(512)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@dataclass(frozen=True)
class Forgery:
    """One kind of forged registration."""

    name: str
    live_id: bool  # registers under a live node's id (else a fresh one)
    metadata: tuple[tuple[str, str], ...]


def forgeries(token: str | None) -> list[Forgery]:
    wrong = (("authorization", "Bearer not-the-cluster-token"),)
    kinds = [
        Forgery("no token", False, ()),
        Forgery("wrong token", False, wrong),
        Forgery("live id, no token", True, ()),
        Forgery("live id, wrong token", True, wrong),
    ]
    if token:
        insider = (("authorization", f"Bearer {token}"), ("llamaherd-node-key", "forged"))
        kinds.append(Forgery("live id, real token, wrong node key", True, insider))
    return kinds


def forged_report(template: cl_pb.NodeReport, node_id: str, address: str) -> cl_pb.NodeReport:
    report = cl_pb.NodeReport()
    report.CopyFrom(template)
    report.node_id = node_id
    report.address = address
    report.hardware.reference_decode_tokens_per_second = 1e6
    for model in report.models:
        model.decode_tokens_per_second = 1e6
        model.queued_requests = model.active_requests = 0
    return report


def register(registry: str, report: cl_pb.NodeReport, forgery: Forgery, hold_s: float) -> str:
    """Sends the forged heartbeats for `hold_s`; ACCEPTED when the registry took them."""

    def reports() -> Iterator[cl_pb.NodeReport]:
        end = time.monotonic() + hold_s
        sequence = 0
        while time.monotonic() < end:
            report.sequence = sequence
            sequence += 1
            yield report
            time.sleep(0.3)

    with grpc.insecure_channel(registry) as channel:
        stub = cluster_pb2_grpc.CoordinatorStub(channel)
        call = stub.Heartbeat(reports(), metadata=forgery.metadata, timeout=hold_s + 5)
        try:
            first = next(call)
        except (grpc.RpcError, StopIteration):
            return REFUSED
        if first.error:
            return REFUSED
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass
        return ACCEPTED


def flood(
    registry: str,
    template: cl_pb.NodeReport,
    black_hole: str,
    token: str | None,
    seconds: float,
    hold_s: float = 2.0,
    parallel: int = 8,
) -> dict[str, dict[str, int]]:
    """Every kind of forgery in turn, `parallel` at a time, for `seconds`:
    {kind: {outcome: count}}."""
    counts: dict[str, dict[str, int]] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds
    kinds = forgeries(token)

    def sender(index: int) -> None:
        attempt = index
        while time.monotonic() < end:
            forgery = kinds[attempt % len(kinds)]
            node_id = template.node_id if forgery.live_id else f"forged-{attempt}"
            report = forged_report(template, node_id, black_hole)
            outcome = register(registry, report, forgery, hold_s)
            with lock:
                counts.setdefault(forgery.name, {ACCEPTED: 0, REFUSED: 0})[outcome] += 1
            attempt += parallel

    with ThreadPoolExecutor(parallel) as pool:
        for future in [pool.submit(sender, i) for i in range(parallel)]:
            future.result()
    return counts
