"""A worker's link to its coordinator: one long-lived Heartbeat stream of full node reports.

The first report registers the node; later ones carry its load and models. Reports go out
every heartbeat interval, and at once when a model's state changes, so placement and routing
learn of a finished load without waiting. When the coordinator is unreachable or restarts,
the link reconnects with capped backoff and the next report registers the node again: the
coordinator's state is rebuilt from reports alone.

The stream carries the cluster's join token and this node's key (common.cluster_auth), to
which the coordinator binds the node id; with mutual TLS (common.cluster_tls) it also runs
over TLS with this node's certificate, whose common name must be the node id. A refusal
(wrong token, or the id bound to another key) is logged once with what to do, then retried
only every REFUSED_RETRY_S. A worker that
has had no coordinator for coordinator_lost_exit_s (unreachable or refusing) gives up: `run`
returns, and the worker drains and exits, so the workers of a dead cluster do not retry
forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator

import grpc
from grpc import aio
from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import cluster_pb2_grpc
from pydantic import SecretStr

from common.cluster_auth import NODE_KEY_KEY, auth_metadata
from common.cluster_secrets import JOIN_HINT, TlsFiles, node_key
from common.cluster_tls import aio_channel
from common.hardware import HardwareInfo
from common.leases import Lease
from common.net import join_host_port, split_host_port
from common.status import NodeStatus
from common.wire.status import node_status_to_report
from worker.config import WorkerSettings
from worker.models.estimate import MemoryBudget
from worker.models.registry import ModelRegistry
from worker.split.lender import RpcLender
from worker.telemetry.sampler import TelemetrySampler

log = logging.getLogger(__name__)

VERSION = "0.1.0"
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# A refusal does not go away by itself: retry seldom (the coordinator's token may be fixed).
REFUSED_RETRY_S = 30.0
REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# What grpcio's asyncio client puts in place of the server's status when its own write fails
# because the server has already ended the call (grpc/grpc#36066): a refusal decided on the
# stream's metadata races the first report, and about 1 refused stream in 1,000 ends with it.
CLIENT_WRITE_LOST = "Internal error from Core"
# Streams opened again at once when one ended that way before registering, before the
# outcome counts: the server's real answer (a refusal, usually) comes back on the next one.
WRITE_LOST_RETRIES = 3


def advertised_address(settings: WorkerSettings, port: int) -> str:
    """Where gateways reach this worker: the configured address, else host:port, with a
    wildcard host replaced by this machine's address on the route to the coordinator."""
    if settings.advertise_address:
        return settings.advertise_address
    host = settings.host
    if host in WILDCARD_HOSTS:
        host = _route_address(settings.coordinator) or socket.gethostname()
    return join_host_port(host, port)


def _route_address(coordinator: str | None) -> str | None:
    if coordinator is None:
        return None
    host, port = split_host_port(coordinator)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # A UDP connect only picks the outgoing interface; nothing is sent.
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
    except OSError:
        return None


def default_node_id(port: int) -> str:
    return f"{socket.gethostname()}:{port}"


class CoordinatorLink:
    def __init__(
        self,
        settings: WorkerSettings,
        registry: ModelRegistry,
        budget: MemoryBudget,
        hardware: HardwareInfo,
        port: int,
        token: SecretStr,
        sampler: TelemetrySampler | None = None,
        lender: RpcLender | None = None,
        tls: TlsFiles | None = None,
        files_port: int | None = None,
    ) -> None:
        assert settings.coordinator is not None
        self._files_port = files_port
        self._tls = tls
        self._target = settings.coordinator
        self._registry = registry
        self._budget = budget
        self._interval = settings.heartbeat_interval_s
        self.node_id = settings.node_id or default_node_id(port)
        self._metadata = (
            *auth_metadata(token),
            (NODE_KEY_KEY, node_key(settings.node_key_dir, self.node_id)),
        )
        self._give_up_after = settings.coordinator_lost_exit_s
        self.address = advertised_address(settings, port)
        self._hardware = dataclasses.replace(hardware, labels=frozenset(settings.labels))
        self._sampler = sampler
        self._lender = lender
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        registry.on_change(self.nudge)
        if lender is not None:
            lender.on_change(self.nudge)
        if sampler is not None:
            # Each fresh sample goes out at once rather than up to an interval later.
            sampler.on_sample(lambda _sample: self.nudge())
        self.registered = asyncio.Event()

    def nudge(self) -> None:
        """Sends a report now rather than at the next interval (callable from any thread)."""
        self._loop.call_soon_threadsafe(self._changed.set)

    def status(self) -> NodeStatus:
        """This node now, as the coordinator sees it."""
        sample = self._sampler.latest if self._sampler is not None else None
        store = self._registry.store
        return NodeStatus(
            node_id=self.node_id,
            address=self.address,
            hardware=self._hardware,
            models=tuple(self._registry.list()),
            memory_free=max(0, self._budget.free_bytes()),
            version=VERSION,
            telemetry=sample,
            leases=tuple(self.leases()),
            stored_files=store.stored_files() if store is not None else (),
            model_disk_free_bytes=store.free_bytes() if store is not None else None,
            files_port=self._files_port,
        )

    def report(self, sequence: int) -> cl_pb.NodeReport:
        return node_status_to_report(self.status(), sequence)

    def leases(self) -> list[Lease]:
        return self._lender.leases() if self._lender is not None else []

    async def run(self) -> None:
        """Keeps the link up until cancelled, or returns once the coordinator has been gone
        (or refusing) for coordinator_lost_exit_s; logs each outage once, not every retry."""
        attempt = 0
        refused: grpc.StatusCode | None = None
        lost_since = self._loop.time()
        while True:
            try:
                await self._session()
                problem = "closed the stream"
                code = None
            except aio.AioRpcError as exc:
                problem = f"unreachable ({exc.code().name}: {exc.details()})"
                code = exc.code()
            if self.registered.is_set():
                attempt, refused = 0, None
                lost_since = self._loop.time()
                log.warning("lost coordinator %s: %s; reconnecting", self._target, problem)
            elif code in REFUSALS:
                if refused != code:
                    log.error("%s", self._refusal_line(code))
                refused = code
            elif attempt == 0:
                log.warning("coordinator %s %s; retrying", self._target, problem)
            self.registered.clear()
            gone = self._loop.time() - lost_since
            if self._give_up_after > 0 and gone >= self._give_up_after:
                log.error(
                    "no coordinator for %.0f s (coordinator_lost_exit_s): %s; this worker "
                    "stops (it drains, then exits)",
                    gone, "it refuses this node" if refused else f"{self._target} {problem}",
                )  # fmt: skip
                return
            delay = REFUSED_RETRY_S if refused else BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if self._give_up_after > 0:
                delay = min(delay, max(self._give_up_after - gone, 0.0))
            await asyncio.sleep(delay)
            attempt += 1

    def _refusal_line(self, code: grpc.StatusCode) -> str:
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return (
                f"coordinator {self._target} refused this worker's cluster token: {JOIN_HINT}, "
                f"with the token of that coordinator; retrying every {REFUSED_RETRY_S:.0f} s"
            )
        return (
            f"coordinator {self._target} refused to register this node as {self.node_id!r}: "
            "another worker holds that node id (or held it with another node key up to the "
            "coordinator's forget_after_s ago); give each worker its own node_id; retrying "
            f"every {REFUSED_RETRY_S:.0f} s"
        )

    async def _session(self) -> None:
        """One stream until it ends. One that ends before registering with the status grpcio
        makes up when its write of the first report loses the race with the server's end
        of the call is opened again at once: that status hides the server's own (a
        refusal, usually), which the operator must see, not a made-up INTERNAL."""
        for attempt in range(WRITE_LOST_RETRIES + 1):
            try:
                await self._stream()
                return
            except aio.AioRpcError as exc:
                if (
                    self.registered.is_set()
                    or not _write_lost(exc)
                    or attempt == WRITE_LOST_RETRIES
                ):
                    raise
                log.debug("coordinator %s: %s; asking again", self._target, exc.details())

    async def _stream(self) -> None:
        async with aio_channel(self._target, self._tls) as channel:
            stub = cluster_pb2_grpc.CoordinatorStub(channel)
            call = stub.Heartbeat(self._reports(), metadata=self._metadata)
            async for reply in call:
                if reply.error:
                    log.error("coordinator %s refused this node: %s", self._target, reply.error)
                    call.cancel()
                    raise aio.AioRpcError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        aio.Metadata(),
                        aio.Metadata(),
                        details=reply.error,
                    )
                if reply.heartbeat_interval_s > 0:
                    self._interval = reply.heartbeat_interval_s
                if not self.registered.is_set():
                    self.registered.set()
                    log.info(
                        "registered with coordinator %s as %s (%s)",
                        self._target, self.node_id, self.address,
                    )  # fmt: skip

    async def _reports(self) -> AsyncIterator[cl_pb.NodeReport]:
        sequence = 0
        while True:
            self._changed.clear()
            yield self.report(sequence)
            sequence += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval)


def _write_lost(exc: aio.AioRpcError) -> bool:
    """The call's status is grpcio's own INTERNAL for a failed write, not the server's."""
    details: str | None = exc.details()
    return exc.code() == grpc.StatusCode.INTERNAL and details == CLIENT_WRITE_LOST
