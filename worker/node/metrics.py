"""The worker's Prometheus endpoint: this node's telemetry, capability and model load.

Served by prometheus-client's own HTTP server on a thread, on the worker's host (loopback
unless configured), so scraping never touches the gRPC event loop. The registry is private
to the worker: no process-global collectors end up in the output twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from common.hardware import HardwareInfo
from common.net import join_host_port
from common.prometheus import (
    MetricSet,
    add_models,
    add_node_facts,
    add_node_sample,
)
from common.settings import ConfigError
from worker.models.estimate import MemoryBudget
from worker.models.registry import ModelRegistry
from worker.telemetry.sampler import TelemetrySampler

log = logging.getLogger(__name__)


class WorkerCollector(Collector):
    def __init__(
        self,
        sampler: TelemetrySampler,
        registry: ModelRegistry,
        budget: MemoryBudget,
        hardware: Callable[[], HardwareInfo],
    ) -> None:
        self._sampler = sampler
        self._registry = registry
        self._budget = budget
        self._hardware = hardware

    def collect(self) -> Iterator[Metric]:
        metrics = MetricSet()
        sample = self._sampler.latest
        if sample is not None:
            add_node_sample(metrics, sample)
        add_node_facts(metrics, self._hardware(), max(0, self._budget.free_bytes()))
        add_models(metrics, self._registry.list())
        return metrics.families()


class MetricsServer:
    def __init__(self, collector: Collector) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        self._server: WSGIServer | None = None
        self.port = 0

    def start(self, host: str, port: int) -> int:
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self._registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /metrics on {join_host_port(host, port)}: {exc.strerror}; "
                "set metrics_port, or --no-metrics"
            ) from exc
        self.port = int(self._server.server_port)
        log.info("metrics at http://%s/metrics", join_host_port(host, self.port))
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
