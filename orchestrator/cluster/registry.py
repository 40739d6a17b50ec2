"""The worker registry: the Coordinator gRPC service that receives heartbeats, keeps the
ClusterState, and lets readers wait for the next change.

Plain asyncio; the Ray actor that hosts it (orchestrator.runtime) only forwards calls.

Every call needs the cluster token (common.cluster_auth.ClusterTokenInterceptor refuses the
rest with UNAUTHENTICATED before a report is read), and every stream its node key, to which
the node id is bound (orchestrator.cluster.state). With mutual TLS, the node id must also be
the common name of the worker's certificate. A refused registration hears only
"registration refused": nothing about the node that holds the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc import aio
from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import cluster_pb2_grpc

from common.cluster_auth import (
    NODE_KEY_KEY,
    ClusterTokenInterceptor,
    metadata_value,
)
from common.cluster_secrets import credential_digest
from common.cluster_tls import listen, peer_common_name
from common.net import join_host_port
from orchestrator.cluster.capacity import CapacityFileError, load_records
from orchestrator.cluster.feed import SnapshotFeed
from orchestrator.cluster.interning import Interner
from orchestrator.cluster.reports import BadReport, node_from_report
from orchestrator.cluster.state import ClusterState, NodeConflict
from orchestrator.cluster.types import ClusterSnapshot, NodeId, PlacementProblem

if TYPE_CHECKING:
    from pydantic import SecretStr

    from common.cluster_secrets import TlsFiles

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Readers following the feed (update_after) get at most one snapshot per this many seconds:
# at 10,000 nodes every heartbeat is a change, and a snapshot per change could not be
# shipped, let alone decoded (tests/bench/simulate_fleet.py).
PUBLISH_INTERVAL_S = 0.5


class WorkerRegistry(cluster_pb2_grpc.CoordinatorServicer):  # type: ignore[misc]
    """The Coordinator service; `token` is the cluster's join token, always required."""

    def __init__(
        self,
        heartbeat_interval_s: float,
        down_after_s: float,
        forget_after_s: float,
        token: SecretStr,
        clock: Clock = time.monotonic,
        tls: TlsFiles | None = None,
        capacity_file: Path | None = None,
        publish_interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self._token = token
        # Measured capacities (llamaherd capacity --save writes the file): read at start
        # and whenever the file changes, and carried by every snapshot.
        self._capacity_file = capacity_file
        self._capacity_stamp: tuple[int, int] | None = None
        self._tls = tls
        self._interval = heartbeat_interval_s
        self._state = ClusterState(down_after_s, forget_after_s)
        self._clock = clock
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self._feed = SnapshotFeed()  # what update_after's readers follow
        self._interner = Interner()  # one object per distinct hardware and model config
        self._publish_interval = publish_interval_s
        self._published_at = -math.inf  # on self._clock
        self._streams = itertools.count(1)
        self._server: aio.Server | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.port = 0

    # ---- lifetime --------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        self._server = aio.server(
            interceptors=[ClusterTokenInterceptor(self._token)], options=[("grpc.so_reuseport", 0)]
        )
        cluster_pb2_grpc.add_CoordinatorServicer_to_server(self, self._server)
        address = join_host_port(host, port)
        try:
            self.port = listen(self._server, address, self._tls)
        except RuntimeError as exc:
            raise OSError(f"the worker registry cannot listen on {address}: {exc}") from exc
        await self._server.start()
        self._reload_capacities()
        self._expiry = asyncio.create_task(self._expire_loop(), name="registry-expiry")
        log.info("worker registry listening on %s", join_host_port(host, self.port))
        return self.port

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._server is not None:
            await self._server.stop(0.5)

    # ---- readers ---------------------------------------------------------------------
    def snapshot(self) -> ClusterSnapshot:
        return self._state.snapshot(self._clock())

    async def update_after(self, epoch: str, version: int, timeout_s: float) -> bytes:
        """The encoded update (orchestrator.cluster.feed) that takes a reader holding
        `version` of feed `epoch` to the next published snapshot, or to the latest after
        `timeout_s`: a delta when it holds a recent publication, else the whole snapshot
        (a new reader passes epoch "" and version -1).

        A change is published at once after a quiet spell of `publish_interval_s`, else at
        the end of that interval since the last publication, so readers get at most one
        snapshot per interval however often the nodes report."""
        deadline = self._clock() + timeout_s
        while True:
            wait = self._publish_when_due()
            latest = self._feed.latest
            if latest is not None and (epoch != self._feed.epoch or latest.version != version):
                break
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            if wait is None:  # nothing new: wait for a change
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
            else:  # a change waits for its interval: sleep through the heartbeats until then
                await asyncio.sleep(min(wait, remaining))
        return self._feed.encoded(epoch, version)

    def _publish_when_due(self) -> float | None:
        """Publishes the state if it changed since the last publication and the interval
        has passed; otherwise the seconds until it may (None: nothing to publish)."""
        latest = self._feed.latest
        if latest is not None and latest.version == self._state.version:
            return None
        wait = self._published_at + self._publish_interval - self._clock()
        if wait > 0 and latest is not None:
            return wait
        self._feed.publish(self.snapshot())
        self._published_at = self._clock()
        return None

    def set_problems(self, problems: tuple[PlacementProblem, ...]) -> None:
        self._state.set_problems(problems)
        self._notify()

    # ---- the Coordinator service -------------------------------------------------------
    async def Heartbeat(
        self, requests: AsyncIterator[cl_pb.NodeReport], context: aio.ServicerContext
    ) -> AsyncIterator[cl_pb.HeartbeatReply]:
        stream = next(self._streams)
        key = metadata_value(context.invocation_metadata(), NODE_KEY_KEY)
        if not key:
            log.warning("refused a heartbeat stream from %s: no node key", context.peer())
            self._refuse("", context.peer(), "it sent no node key")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"registration refused: send a node key ({NODE_KEY_KEY} metadata)",
            )
        credential = credential_digest(key or "")
        node_id: NodeId | None = None
        reason = "heartbeat stream closed"
        try:
            async for report in requests:
                try:
                    node = self._interner.node(node_from_report(report, self._clock()))
                    if node_id is not None and node.node_id != node_id:
                        raise BadReport(f"this stream registered {node_id!r}; it cannot switch")
                    if self._tls is not None and peer_common_name(context) != node.node_id:
                        raise NodeConflict(f"its certificate names {peer_common_name(context)!r}")
                    self._state.report(node, stream, credential)
                except BadReport as exc:
                    log.warning("refused a report from %s: %s", context.peer(), exc)
                    yield cl_pb.HeartbeatReply(error=str(exc))
                    return
                except NodeConflict as exc:
                    log.warning(
                        "refused node id %r from %s: %s", report.node_id, context.peer(), exc.reason
                    )
                    self._refuse(report.node_id, context.peer(), exc.reason)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                if node_id is None:
                    node_id = node.node_id
                    log.info(
                        "node %s registered from %s (%s, %d models)",
                        node_id, node.address, node.hardware.kind, len(node.replicas),
                    )  # fmt: skip
                    yield cl_pb.HeartbeatReply(heartbeat_interval_s=self._interval)
                self._notify()
        except aio.AioRpcError as exc:
            reason = f"heartbeat stream broke ({exc.code().name})"
        finally:
            # Only the id's current stream speaks for it: the end of a replaced or refused
            # stream leaves the node alone.
            if node_id is not None and self._state.owns(node_id, stream):
                log.info("node %s left routing: %s", node_id, reason)
                self._state.disconnected(node_id, stream, self._clock(), reason)
                self._notify()

    def _refuse(self, node_id: str, peer: str, reason: str) -> None:
        """Records a refused registration for the dashboards (orchestrator.cluster.state)."""
        self._state.refused(node_id, peer, reason, self._clock())
        self._notify()

    def _reload_capacities(self) -> None:
        """Reads the capacity file again when it changed (or appeared, or went away); a
        file that cannot be read keeps the records already known, and says why."""
        if self._capacity_file is None:
            return
        try:
            stat = self._capacity_file.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._capacity_stamp:
            return
        self._capacity_stamp = stamp
        try:
            records = load_records(self._capacity_file)
        except CapacityFileError as exc:
            log.warning("capacities unchanged: %s", exc)
            return
        log.info("%d measured capacities from %s", len(records), self._capacity_file)
        self._state.set_capacities(records)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self._interval, 0.5))
            self._reload_capacities()
            if self._state.expire(self._clock()):
                for node in self.snapshot().nodes:
                    if not node.up:
                        log.debug("node %s is down: %s", node.node_id, node.down_reason)
                self._notify()
