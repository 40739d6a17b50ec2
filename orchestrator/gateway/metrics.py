"""The gateway's `/metrics`: every node of the cluster in Prometheus format, one `node` label.

The same metric families a worker exports about itself (common.prometheus), built
from the heartbeats the coordinator keeps, so one scrape of any gateway covers the cluster,
including nodes whose own /metrics port is not reachable from the monitoring host; and,
when the Router records traffic, this gateway's own requests (orchestrator.dashboard.traffic:
`llamaherd_gateway_requests_total`, `..._generated_tokens_total` and the TTFT, inter-token
latency and duration histograms), counted since the gateway started.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from common.prometheus import (
    MetricSet,
    add_models,
    add_node_facts,
    add_node_sample,
)
from orchestrator.gateway.router import Router


def cluster_metrics(router: Router) -> bytes:
    """The Prometheus text exposition of the whole cluster as this gateway sees it now."""
    metrics = MetricSet(base_labels=("node",))
    now = router.state_clock()
    for node in router.snapshot.nodes:
        base = (node.node_id,)
        metrics.gauge("node_up", "1 while the node heartbeats and takes requests",
                      int(node.up), base)  # fmt: skip
        metrics.gauge("node_seconds_since_report", "Age of the node's latest heartbeat",
                      max(0.0, now - node.last_report), base)  # fmt: skip
        metrics.gauge("gateway_requests_inflight", "Requests this gateway relays to the node now",
                      router.inflight_to(node.node_id), base)  # fmt: skip
        add_node_facts(metrics, node.hardware, node.memory_free, base)
        if node.telemetry is not None:
            add_node_sample(metrics, node.telemetry, base)
        add_models(metrics, node.replicas, base)
    families = list(metrics.families())
    if router.traffic is not None:
        families.extend(router.traffic.families())
    return render(families)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: Iterable[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return bytes(generate_latest(registry))
