"""Assembles and runs a worker: gRPC server, health, reflection, models, clean shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable

import psutil
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llamaherd.v1 import worker_pb2, worker_pb2_grpc

from common.cluster_auth import ClusterTokenInterceptor
from common.cluster_secrets import TlsFiles, resolve_token
from common.cluster_tls import listen
from common.errors import LlamaherdError
from common.grpc_errors import ErrorInterceptor
from common.hardware import HardwareInfo
from common.memory import format_bytes
from common.model_settings import ModelConfig
from common.net import join_host_port, split_host_port
from common.settings import ConfigError
from worker.api.heartbeat import CoordinatorLink, advertised_address
from worker.api.servicer import WorkerServicer
from worker.config import WorkerSettings, default_threads
from worker.engine.pools import WorkerPools
from worker.llamacpp import ensure_backend, supports_rpc, system_info
from worker.models.builtin import default_model_config
from worker.models.estimate import MemoryBudget
from worker.models.local import load_local, request_limits
from worker.models.registry import ModelRegistry
from worker.node.hardware import cpu_model, detect
from worker.node.metrics import MetricsServer, StoreFiles, WorkerCollector
from worker.node.reference_speed import (
    cache_key,
    default_cache_dir,
    gpu_layers_for,
    reference_speed,
)
from worker.split.lender import RpcLender
from worker.split.lifetime import die_with_parent
from worker.split.runner import SplitModel
from worker.telemetry.sampler import TelemetrySampler, start_sampler

log = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# Exit status of a worker that gave up on its coordinator (coordinator_lost_exit_s): not 0, so
# a supervisor (systemd's Restart=on-failure) starts it afresh, while an orphan just ends.
EXIT_COORDINATOR_LOST = 3
SERVER_OPTIONS = [
    # Responses (embeddings of many long inputs) can exceed gRPC's 4 MB default.
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # gRPC binds with SO_REUSEPORT by default: a second worker on the same port would start
    # "successfully" and silently share the traffic. Refuse instead.
    ("grpc.so_reuseport", 0),
]


def memory_budget(settings: WorkerSettings) -> MemoryBudget:
    total = psutil.virtual_memory().total
    limit = settings.memory_limit or total - settings.memory_reserve
    return MemoryBudget(
        limit_bytes=int(limit),
        reserve_bytes=int(settings.memory_reserve),
        available=lambda: psutil.virtual_memory().available,
    )


class WorkerServer:
    def __init__(self, settings: WorkerSettings) -> None:
        # The join token, read once (from its file if need be) and passed down in the
        # settings: the split children and their relay need it too.
        token = resolve_token(settings.cluster_token, settings.cluster_token_file)
        settings = settings.model_copy(update={"cluster_token": token})
        self.settings = settings
        self.tls = TlsFiles.load(settings.tls_ca, settings.tls_cert, settings.tls_key)
        self.budget = memory_budget(settings)
        self.pools = WorkerPools(settings)
        limits = request_limits(settings)
        self.registry = ModelRegistry(
            settings,
            self.budget,
            local=lambda config, facts: load_local(config, facts, self.pools.requests, limits),
            split=lambda config, facts, on_lost: SplitModel.start(config, facts, settings, on_lost),
            pool=self.pools.models,
        )
        self.lender: RpcLender | None = None
        if supports_rpc() and not settings.split_child:
            self.lender = RpcLender(
                settings.host, _advertised_host(settings), self.budget, default_threads(),
                settings.max_leases, settings.rpc_guard,
            )  # fmt: skip
        self.health = health.aio.HealthServicer()
        # With a token, every call but health needs it, reflection included: it serves only
        # those who may call the API anyway.
        interceptors: list[aio.ServerInterceptor] = [ErrorInterceptor()]
        if token is not None:
            interceptors.insert(0, ClusterTokenInterceptor(token))
        self._server = aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        worker_pb2_grpc.add_WorkerServicer_to_server(
            WorkerServicer(self.registry, self.lender), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self.link: CoordinatorLink | None = None
        self._link_task: asyncio.Task[None] | None = None
        self.sampler: TelemetrySampler | None = None
        self.hardware: HardwareInfo | None = None
        self.metrics: MetricsServer | None = None

    async def start(self) -> None:
        # Whatever else blocks (telemetry start, closing a model) gets a bounded pool of its
        # own rather than the loop's default, shared with nothing that requests do.
        asyncio.get_running_loop().set_default_executor(self.pools.other)
        ensure_backend()
        address = join_host_port(self.settings.host, self.settings.port)
        try:
            self.port = listen(self._server, address, self.tls)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from exc
        if self.port == 0:
            raise ConfigError(f"cannot listen on {address}: address in use or not local")
        if self.settings.host not in LOOPBACK and self.settings.cluster_token is None:
            log.warning(
                "listening on %s beyond loopback without a join token (--insecure): anyone "
                "who reaches this port can use the Worker API",
                self.settings.host,
            )
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        log.info(
            "worker listening on %s (memory for models: %s)",
            join_host_port(self.settings.host, self.port),
            format_bytes(self.budget.free_bytes()),
        )
        sampler = await asyncio.to_thread(
            start_sampler, self.settings.model_dirs, self.settings.telemetry_interval_s
        )
        self.sampler = sampler
        hardware = detect(
            system_info(), supports_rpc(), sampler.latest,
            sampler.selection.names, sampler.selection.skipped,
        )  # fmt: skip
        if self.settings.reference_speed:
            hardware = await asyncio.to_thread(_with_reference_speed, hardware)
        self.hardware = hardware
        if self.settings.metrics:
            store = self.registry.store
            token = self.settings.cluster_token
            files = (
                StoreFiles(store, token.get_secret_value() if token else None) if store else None
            )
            self.metrics = MetricsServer(
                WorkerCollector(sampler, self.registry, self.budget, lambda: hardware), files
            )
            self.metrics.start(self.settings.host, self.settings.metrics_listen_port)
        if self.settings.coordinator:
            assert self.settings.cluster_token is not None  # WorkerSettings requires one
            self.link = CoordinatorLink(
                self.settings, self.registry, self.budget, hardware, self.port,
                self.settings.cluster_token, sampler, self.lender, self.tls,
                self.metrics.port if self.metrics is not None else None,
            )  # fmt: skip
            self._link_task = asyncio.create_task(self.link.run(), name="coordinator-link")
        await self.registry.load_configured(self._initial_models())
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        ready = [m.alias for m in self.registry.list() if m.ready]
        log.info("worker serving models: %s", ", ".join(ready) or "none")

    def on_coordinator_lost(self, callback: Callable[[], None]) -> None:
        """Calls `callback` if the coordinator link gives up (coordinator_lost_exit_s)."""
        if self._link_task is not None:
            self._link_task.add_done_callback(lambda task: None if task.cancelled() else callback())

    @property
    def coordinator_lost(self) -> bool:
        task = self._link_task
        return task is not None and task.done() and not task.cancelled()

    def _initial_models(self) -> tuple[ModelConfig, ...]:
        """The configured models; with none, the embedded default, unless a coordinator
        decides what this node serves."""
        if self.settings.models or self.settings.coordinator:
            return self.settings.models
        return (default_model_config(),)

    async def stop(self) -> None:
        """Drains, then stops: requests in flight get up to shutdown_grace_s to finish.

        The node stays registered while it drains, its models DRAINING, so gateways send
        nothing new here but keep relaying what is running (a gateway cancels the streams
        of a node that leaves). Only then does the heartbeat stream close."""
        grace = self.settings.shutdown_grace_s
        started = asyncio.get_running_loop().time()
        self.registry.drain("the worker is shutting down")
        if not await self.registry.wait_idle(grace):
            log.warning(
                "%d requests still in flight after %.0f s (shutdown_grace_s): they are cut",
                self.registry.in_flight(), grace,
            )  # fmt: skip
        if self._link_task is not None:
            self._link_task.cancel()
            await asyncio.gather(self._link_task, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        # What is left of the grace for streams still sending their last message.
        remaining = grace - (asyncio.get_running_loop().time() - started)
        await self._server.stop(max(remaining, 0.5))
        await self.registry.close_all()
        if self.lender is not None:
            await self.lender.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.sampler is not None:
            self.sampler.stop()
        self.pools.shutdown()
        log.info("worker stopped")


def _advertised_host(settings: WorkerSettings) -> str:
    """The host heads reach this node's RPC servers at: the node's own advertised host."""
    return split_host_port(advertised_address(settings, settings.port or 1))[0]


def _with_reference_speed(hardware: HardwareInfo) -> HardwareInfo:
    """The profile with its measured speed, or as it is when the figure cannot be had (the
    coordinator then ranks this node by its models' own rates once it serves)."""
    threads = default_threads()
    layers = gpu_layers_for(hardware.backends)
    key = cache_key(system_info(), cpu_model(), hardware.gpus, threads, layers)
    try:
        speed = reference_speed(default_cache_dir(), key, threads, layers)
    except (LlamaherdError, OSError) as exc:
        log.warning("reference speed not measured: %s", exc)
        return hardware
    return dataclasses.replace(hardware, reference_decode_tps=speed.decode_tps)


async def serve(settings: WorkerSettings, on_ready: Callable[[int], None] | None = None) -> int:
    """Runs a worker until SIGINT or SIGTERM, or until it gives up on its coordinator;
    returns the process's exit status."""
    if settings.split_child:
        die_with_parent()
    server = WorkerServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    server.on_coordinator_lost(stop.set)
    if on_ready is not None:
        on_ready(server.port)
    await stop.wait()
    log.info("shutting down (in-flight requests get %.0f s)", settings.shutdown_grace_s)
    await server.stop()
    return EXIT_COORDINATOR_LOST if server.coordinator_lost else 0
