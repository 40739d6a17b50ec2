"""One gateway process: the OpenAI HTTP API and the gRPC Inference API over one Router,
kept current by a loop that waits for each new snapshot of the cluster.

Ray starts one of these per Ray node (orchestrator.runtime); nothing here imports Ray, the
snapshot source is any coroutine function.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable

import uvicorn
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llamaherd.v1 import inference_pb2, inference_pb2_grpc
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from common.collector import frozen_heap
from common.grpc_errors import ErrorInterceptor
from common.net import join_host_port
from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.cluster.view import view_to_json
from orchestrator.config import CoordinatorSettings
from orchestrator.dashboard.document import GatewayInfo
from orchestrator.dashboard.feed import Feed
from orchestrator.dashboard.routes import dashboard_routes
from orchestrator.dashboard.traffic import Traffic
from orchestrator.gateway.auth import GrpcApiKey, HttpApiKey
from orchestrator.gateway.grpc_api import InferenceServicer
from orchestrator.gateway.http_api import build_app
from orchestrator.gateway.router import Router
from orchestrator.gateway.views import cluster_status
from orchestrator.routing.policies import make_policy
from orchestrator.worker_client import WorkerClients

log = logging.getLogger(__name__)

SnapshotSource = Callable[[int], Awaitable[ClusterSnapshot]]
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


def http_app(api: ASGIApp, feed: Feed | None, api_key: str | None) -> ASGIApp:
    """The HTTP port: the dashboard's routes (when `feed` is given) before the API's, all
    behind the API key when one is set (auth opens the dashboard's page, not its data)."""
    app = api
    if feed is not None:
        app = Starlette(routes=[*dashboard_routes(feed), Mount("", app=api)])
    return HttpApiKey(app, api_key) if api_key else app


class Gateway:
    def __init__(self, settings: CoordinatorSettings, snapshots: SnapshotSource) -> None:
        self.settings = settings
        self._snapshots = snapshots
        self.clients = WorkerClients(token=settings.cluster_token, tls=settings.tls())
        self.traffic = Traffic()  # this gateway's requests, for /metrics and the dashboard
        self.router = Router(
            make_policy(settings.routing_policy, random.Random()),
            self.clients,
            settings.retries,
            stall_timeout_s=settings.stall_timeout_s,
            traffic=self.traffic,
            power_budget_w=settings.power_budget_w,
        )
        self._shared_ports = settings.gateways_per_node > 1
        key = settings.api_key.get_secret_value() if settings.api_key else None
        interceptors: list[aio.ServerInterceptor] = [ErrorInterceptor()]
        if key:
            interceptors.insert(0, GrpcApiKey(key))
        self._api_key = key
        self._grpc = aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", int(self._shared_ports)),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceServicer(self.router), self._grpc
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        self.feed = self._dashboard_feed() if settings.dashboard else None
        self._http: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.http_port = self.grpc_port = 0

    def _dashboard_feed(self) -> Feed:
        """The dashboard's live state: the router's view of the cluster and its traffic."""
        try:
            version = importlib.metadata.version("llamaherd")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree
            version = "unknown"
        info = GatewayInfo(
            version=version,
            started_at=time.time(),
            interval_s=self.settings.dashboard_interval_s,
            api_key_required=self._api_key is not None,
        )
        return Feed(
            snapshot=lambda: self.router.snapshot,
            cluster_json=lambda: view_to_json(cluster_status(self.router)),
            traffic=self.traffic,
            gateway=info,
            max_streams=self.settings.dashboard_max_streams,
        )

    async def start(self) -> tuple[int, int]:
        """Binds both APIs and starts following the cluster; returns (http_port, grpc_port)."""
        host = self.settings.gateway_host
        sock = self._bind_http(host, self.settings.http_port)
        self.http_port = sock.getsockname()[1]
        address = join_host_port(host, self.settings.grpc_port)
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:
            sock.close()
            raise OSError(f"the gateway cannot listen on {address} (gRPC): {exc}") from exc
        await self._grpc.start()
        created = int(time.time())
        api = build_app(self.router, created, self.settings.http_body_timeout_s)
        app = http_app(api, self.feed, self._api_key)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            # A cap on connections, so that clients holding them open (slow or incomplete
            # bodies, idle streams) cannot exhaust the process's sockets.
            limit_concurrency=self.settings.http_max_connections,
        )
        self._http = uvicorn.Server(config)
        self._tasks = [
            asyncio.create_task(self._http.serve(sockets=[sock]), name="gateway-http"),
            asyncio.create_task(self._follow_cluster(), name="gateway-view"),
        ]
        if self.feed is not None:
            self._tasks.append(asyncio.create_task(self.feed.run(), name="gateway-dashboard"))
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "gateway serving HTTP on %s and gRPC on %s",
            join_host_port(host, self.http_port), join_host_port(host, self.grpc_port),
        )  # fmt: skip
        return self.http_port, self.grpc_port

    async def stop(self) -> None:
        await self._health.enter_graceful_shutdown()
        if self.feed is not None:
            self.feed.close()  # ends the dashboard streams, so the HTTP server stops at once
        if self._http is not None:
            self._http.should_exit = True
        await self._grpc.stop(1.0)
        for task in self._tasks:
            if task.get_name() in ("gateway-view", "gateway-dashboard"):
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks)
        await self.clients.close()

    def _bind_http(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self._shared_ports:
            # Several gateways on one node share the port; the kernel spreads connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"the gateway cannot listen on {join_host_port(host, port)} (HTTP): "
                f"{exc.strerror}; is another llamaherd or server using it? set http_port"
            ) from None
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    async def _follow_cluster(self) -> None:
        version = -1
        failures = 0
        while True:
            try:
                snapshot = await self._snapshots(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the registry restarting: keep the last view, retry
                if failures == 0:
                    log.warning("cannot read the cluster state (%s); keeping the last view", exc)
                failures += 1
                await asyncio.sleep(min(0.2 * failures, 2.0))
                continue
            failures = 0
            if snapshot.version != version:
                # Costs what the update changed, a piece at a time (Router.follow).
                await self.router.follow(snapshot)
                await self.clients.keep_only(self.router.addresses)
                # The snapshot's objects out of the collector's reach: a full collection
                # walking them held the loop ~0.5 s at 10,000 nodes (common.collector).
                frozen_heap().settle()
                version = snapshot.version
